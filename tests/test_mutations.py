"""The golden vectors catch plausible porting mistakes: each mutation is a one-line change to a copy of the
NumPy port (mpee_ref/numpy_ref), run through the same runner a porter uses; every one must fail at least
the entry named for it. Harmless variants (a -1e4 mask constant) must still pass.

``python tests/test_mutations.py`` prints the table of which entries catch which mutation (docs/PORTING.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))           # as a script, too

from mpee_ref.vectors import GoldenVectors, report, run  # noqa: E402

SRC = REPO / "mpee_ref" / "numpy_ref"
GOLD = GoldenVectors(REPO / "tests" / "vectors")
TINY = sorted(e for e in GOLD.entries if not GOLD.needs_weights(e))

# (name, file, old line fragment, new fragment, an entry that must catch it)
MUTATIONS = [
    ("LayerNorm one-pass variance E[x^2]-E[x]^2", "equations.py", "var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)",
     "var = (x * x).mean(axis=-1, keepdims=True) - mu * mu", "eq01_layer_norm_offset"),
    ("LayerNorm unbiased variance (D - 1)", "equations.py", "var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)",
     "var = ((x - mu) ** 2).sum(axis=-1, keepdims=True) / (x.shape[-1] - 1)", "eq01_layer_norm"),
    ("LayerNorm eps 1e-5", "equations.py", "np.sqrt(var + eps)", "np.sqrt(var + 1e-5)", "eq01_layer_norm"),
    ("GELU tanh form for hidden_act='gelu'", "equations.py", 'if approximate == "tanh":', "if True:", "eq04_gelu"),
    ("softmax without subtracting the max", "equations.py", "e = np.exp(x - x.max(axis=axis, keepdims=True))",
     "e = np.exp(x)", "eq10_classifier_memory"),
    ("log-softmax without subtracting the max", "equations.py", "s = x - x.max(axis=axis, keepdims=True)", "s = x",
     "eq10_classifier_memory"),
    ("padding mask on the query axis", "equations.py", "np.finfo(dtype).min)[:, None, None, :]",
     "np.finfo(dtype).min)[:, None, :, None]", "eq03_attention"),
    ("scores scaled by sqrt(D), not sqrt(dh)", "equations.py", "/ math.sqrt(dh)", "/ math.sqrt(dh * q.shape[1])",
     "eq03_attention"),
    ("heads split head-minor", "equations.py", "return x.reshape(B, T, H, dh).transpose(0, 2, 1, 3)",
     "return x.reshape(B, T, dh, H).transpose(0, 3, 1, 2)", "eq02_mhsa"),
    ("weights used as (in, out)", "equations.py", "@ weight.T)", "@ weight)", "eq04_ffn"),
    ("class attention: [CLS] key column, not query row", "equations.py", "a = probs[:, :, 0, 1:].mean(axis=1)",
     "a = probs[:, :, 1:, 0].mean(axis=1)", "eq05_class_attention"),
    ("class attention summed over heads", "equations.py", "a = probs[:, :, 0, 1:].mean(axis=1)",
     "a = probs[:, :, 0, 1:].sum(axis=1)", "eq05_class_attention"),
    ("attention memory starts from zeros", "equations.py", "return a_class if prev is None else",
     "return beta * a_class if prev is None else", "eq06_attention_memory"),
    ("beta on the old memory", "equations.py", "(1.0 - beta) * prev + beta * a_class",
     "beta * prev + (1.0 - beta) * a_class", "eq06_attention_memory"),
    ("m by a float ceil", "equations.py", "r = Fraction(repr(float(r_ee)))", "r = Fraction(float(r_ee))",
     "e2e_infer_ceil"),
    ("ties: higher position wins", "equations.py", 'order = np.argsort(-scores[b], kind="stable")',
     'order = len(scores[b]) - 1 - np.argsort(-scores[b][::-1], kind="stable")', "eq07_top_m"),
    ("kept tokens in score order", "equations.py", "kept_idx = np.flatnonzero(keep[b])",
     "kept_idx = np.array([i for i in np.argsort(-memory[b], kind='stable') if keep[b, i]], dtype=np.int64)",
     "eq08_prune_tokens"),
    ("fusion weights normalised", "equations.py", "    if fusion == \"memory\":\n        return score\n",
     "    if fusion == \"memory\":\n        return score / np.maximum(score.sum(axis=1, keepdims=True), 1e-30)\n",
     "eq08_prune_tokens"),
    ("fused memory = mean in the paper config", "equations.py", 'if fused_memory == "mean":', "if True:",
     "eq08_prune_tokens"),
    ("no fused token", "equations.py", 'has_fused = (p > 0) & (fusion != "drop")', "has_fused = (p > 0) & False",
     "eq08_prune_tokens"),
    ("exit head without the pooler tanh", "equations.py", "return linear(np.tanh(linear(h_cls, w_pool, b_pool)), w_cls, b_cls)",
     "return linear(linear(h_cls, w_pool, b_pool), w_cls, b_cls)", "eq09_exit_logits"),
    ("classifier memory starts from zeros", "equations.py", "return logits if prev is None else",
     "return lam * logits if prev is None else", "eq10_classifier_memory"),
    ("lambda on the old memory", "equations.py", "(1.0 - lam) * prev + lam * logits",
     "lam * prev + (1.0 - lam) * logits", "eq10_classifier_memory"),
    ("entropy normalised by ln C", "equations.py", "return -(np.exp(log_p) * log_p).sum(axis=-1)",
     "return -(np.exp(log_p) * log_p).sum(axis=-1) / np.log(memory.shape[-1])", "eq10_classifier_memory"),
    ("exit when entropy > F (the printed text)", "equations.py", "return entropy < threshold",
     "return entropy > threshold", "eq10_classifier_memory"),
    ("CE summed over the batch", "equations.py", "return -log_p[:, np.arange(B), labels].mean(axis=1)",
     "return -log_p[:, np.arange(B), labels].sum(axis=1)", "eq11_cross_entropy"),
    ("teacher weights: softmax over classes", "equations.py", "eta = softmax(scores, axis=0).T",
     "eta = softmax(scores, axis=1).T", "eq12_teacher"),
    ("KL direction swapped", "equations.py", 'if direction == "student_teacher":', 'if direction != "student_teacher":',
     "eq13_kd_loss"),
    ("KD without tau^2", "equations.py", "return tau * tau * per_exit", "return per_exit", "eq13_kd_loss"),
    ("FLOPs: fusion not counted", "flops.py", "+ fusion_flops(p, hidden) + h", "+ h", "eq15_flops"),
    ("FLOPs: baseline without its head", "flops.py", "eq15_layer_flops(n_tokens, n_tokens, hidden, intermediate) + h",
     "eq15_layer_flops(n_tokens, n_tokens, hidden, intermediate)", "eq15_flops"),
    ("rho as a mean of ratios", "flops.py", "return sum(int(f) for f in full) / sum(int(e) for e in executed)",
     "return sum(int(f) / int(e) for f, e in zip(full, executed)) / len(full)", "eq15_flops"),
    ("token types ignored", "equations.py", "+ token_type[token_type_ids]", "+ token_type[0]", "e2e_infer"),
    ("R_ee read as the kept fraction", "model.py", 'r_ee_means=c["r_ee_means"]', 'r_ee_means="keep"', "e2e_infer"),
    ("ratio base: the original length", "model.py", 'return (n_base if c["ratio_base"] == "original" else None), None',
     "return n_base, None", "e2e_infer_ceil"),
    ("no attention memory (beta = 1 everywhere)", "model.py",
     "att_mem = eq.eq06_attention_memory(att_mem, score(probs, mask), self.beta_at(l))",
     "att_mem = score(probs, mask)", "e2e_infer"),
    ("fusion token position code -1 at every layer", "model.py", "if s >= 0 else -l for s in res.source_index[0]",
     "if s >= 0 else -1 for s in res.source_index[0]", "e2e_infer"),
    ("authors: Eq. 7 over the real length, not the padded slots", "model.py",
     "return np.full_like(n_base, W - 1), np.full_like(n_base, W - 1 - m)",
     "return None, np.full_like(n_base, W - 1 - m)", "e2e_authors"),
    ("authors: truncated memory gathered with its tokens", "equations.py",
     "out_mem[b, :k] = memory[b, :k] if truncate else memory[b, kept_idx]", "out_mem[b, :k] = memory[b, kept_idx]",
     "e2e_authors"),
    ("authors: fused memory a mean over the real exited tokens", "equations.py",
     "count = p if fused_mean_count is None else np.asarray(fused_mean_count)", "count = p", "e2e_authors"),
    ("authors: head L predicts where the final classifier should", "model.py",
     "probs = eq.softmax(self.final_logits(h[:, 0]), axis=-1)[0]", "pass", "e2e_authors"),
]
# one-line variants that must still pass: the docs say so
HARMLESS = [
    ("padding mask -1e4 instead of finfo.min", "equations.py", "np.finfo(dtype).min)[:, None, None, :]",
     "-1e4)[:, None, None, :]"),
]


def load_port(tmp: Path, tag: str, patch: tuple[str, str, str] | None = None) -> dict:
    """A copy of mpee_ref/numpy_ref as package ``tag`` (one line patched) and its adapter's ENTRIES."""
    dst = tmp / tag
    shutil.copytree(SRC, dst, ignore=shutil.ignore_patterns("__pycache__"))
    if patch is not None:
        file, old, new = patch
        text = (dst / file).read_text(encoding="utf-8")
        assert text.count(old) == 1, f"mutation target not found once in numpy_ref/{file}: {old!r}"
        (dst / file).write_text(text.replace(old, new), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(tag, dst / "__init__.py", submodule_search_locations=[str(dst)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[tag] = mod
    try:
        spec.loader.exec_module(mod)
        return dict(importlib.import_module(f"{tag}.adapter").ENTRIES)
    finally:
        for name in [n for n in sys.modules if n == tag or n.startswith(tag + ".")]:
            del sys.modules[name]


def catchers(tmp: Path, i: int, patch: tuple[str, str, str]) -> list[str]:
    """Entries (tiny ones, float64) that fail under the mutation."""
    results = run(load_port(tmp, f"npr_mut{i}", patch), "float64", golden=GOLD, entries=TINY)
    return [r.entry for r in results if r.status == "fail"]


def test_unmutated_copy_passes(tmp_path):
    results = run(load_port(tmp_path, "npr_clean"), "float64", golden=GOLD, entries=TINY)
    assert all(r.status == "pass" for r in results), report(results)


@pytest.mark.parametrize("i", range(len(MUTATIONS)), ids=[m[0] for m in MUTATIONS])
def test_vectors_catch_mutation(i, tmp_path):
    name, file, old, new, must = MUTATIONS[i]
    caught = catchers(tmp_path, i, (file, old, new))
    print(f"{name}: caught by {caught}")
    assert must in caught, f"{name!r} is not caught by {must} (caught by {caught})"


def test_one_pass_layer_norm_is_caught_in_float32_too(tmp_path):
    """The fp64 trap is eq01_layer_norm_offset; in float32 the mean-100 input of eq01_layer_norm bites."""
    results = run(load_port(tmp_path, "npr_ln32", MUTATIONS[0][1:4]), "float32", golden=GOLD, entries=["eq01_layer_norm"])
    assert results[0].status == "fail", report(results)


@pytest.mark.parametrize("i", range(len(HARMLESS)), ids=[m[0] for m in HARMLESS])
def test_harmless_variant_passes(i, tmp_path):
    name, file, old, new = HARMLESS[i]
    for precision in ("float64", "float32"):
        results = run(load_port(tmp_path / precision, f"npr_ok{i}", (file, old, new)), precision, golden=GOLD,
                      entries=TINY)
        assert all(r.status in ("pass", "skipped") for r in results), f"{name} ({precision}):\n{report(results)}"


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        print("| mutation (one line of mpee_ref/numpy_ref) | caught by |\n|---|---|")
        for i, (name, file, old, new, _) in enumerate(MUTATIONS):
            print(f"| {name} | {', '.join(f'`{e}`' for e in catchers(Path(d), i, (file, old, new)))} |")
