"""One-line definition and named axes of every golden-vector tensor (written into manifest.json).

Axis names: B batch, T tokens incl. [CLS], N = T - 1 non-[CLS] tokens, D hidden, H heads, dh head size,
F FFN size (the published manifest's letter, kept so the golden files stay unchanged; the code
calls the FFN size I and keeps F for the entropy threshold), C classes, L layers/exits, V vocabulary,
P positions, K cases listed in the entry's attributes, L_b layers sample b executed (its exit layer), T_l = tokens after layer l (incl. [CLS] and
the fused token), p tokens fused at a layer. Layer numbers l are 1-based (layer l produces h^l);
state-dict names count from 0 (``encoder.layer.{l-1}``, ``exits.{l-1}``).
"""

from __future__ import annotations

import re

Def = tuple[list[str], str]

_LAYER = {
    "w_q": (["D", "D"], "W^Q, (out, in) layout: q = h W_q^T + b_q; head h owns rows h*dh:(h+1)*dh"),
    "b_q": (["D"], "b^Q"), "w_k": (["D", "D"], "W^K (out, in)"), "b_k": (["D"], "b^K"),
    "w_v": (["D", "D"], "W^V (out, in)"), "b_v": (["D"], "b^V"),
    "w_o": (["D", "D"], "W^o (out, in): output projection of the concatenated heads"), "b_o": (["D"], "b^o"),
    "ln1_w": (["D"], "gamma of LayerNorm after attention (attention.output.LayerNorm)"),
    "ln1_b": (["D"], "beta of LayerNorm after attention"),
    "w_1": (["F", "D"], "W_1 (out, in) of Eq. 4"), "b_1": (["F"], "b_1"),
    "w_2": (["D", "F"], "W_2 (out, in) of Eq. 4"), "b_2": (["D"], "b_2"),
    "ln2_w": (["D"], "gamma of LayerNorm after the FFN (output.LayerNorm)"), "ln2_b": (["D"], "beta of that LayerNorm"),
}
_MASK = (["B", "T"], "1 = real token, 0 = padding (right-padded)")
_MASK_BIAS = "additive key mask: 0 at real keys, finfo(float64).min at padded keys (any value <= -1000 passes)"
_PRUNE = {
    "hidden": (["B", "T", "D"], "Z~ of a layer: the tokens before pruning"),
    "attention_mask": _MASK,
    "memory": (["B", "N"], "A_m of the non-[CLS] tokens (floor_sin values: ties on purpose)"),
    "out_hidden": (["B", "T_l", "D"], "[CLS], kept tokens in position order, fused token, zero padding"),
    "out_attention_mask": (["B", "T_l"], "mask of out_hidden"),
    "out_memory": (["B", "T_l-1"], "A_m of out_hidden's non-[CLS] rows; fused token: sum (paper) or mean "
                                   "(authors) of the fused scores; 0 at padding"),
    "source_index": (["B", "T_l-1"], "for each non-[CLS] output row: 0-based index into the input's non-[CLS] "
                                     "tokens, -1 = the fused token, -2 = padding"),
    "num_kept": (["B"], "m of Eq. 7 per sample (N = real non-[CLS] tokens)"),
    "kept": (["B", "N"], "token i kept (top-m of memory, ties -> lower index)"),
    "fused": (["B", "N"], "token i real and not kept: fused into h_eef"),
    "alpha": (["B", "N"], "alpha_i of Eq. 8 (= memory score of fused tokens, unnormalised), 0 elsewhere"),
}
_E2E_IN = {
    "input_ids": (["B", "T"], "token ids, 0 at padding"),
    "attention_mask": _MASK,
    "token_type_ids": (["B", "T"], "segment ids (0/1)"),
    "labels": (["B"], "class labels"),
    "param/{key}": ([], "MPEEModel.state_dict() tensor of that name (axes: PyTorch layout, Linear (out, in))"),
}
_SAMPLE = {
    "s{b}/exit_layer": ([], "1-based layer where sample b exits: first l with entropy < F, else L"),
    "s{b}/prediction": ([], "argmax of probabilities (ties -> lower class)"),
    "s{b}/probabilities": (["C"], "softmax(C_zm) at the exit layer"),
    "s{b}/entropy": (["L_b"], "natural-log entropy of softmax(C_zm^l) at each executed layer"),
    "s{b}/exit_logits": (["L_b", "C"], "C_z^l: exit head l on h^l[CLS] (Eq. 9)"),
    "s{b}/cls_memory": (["L_b", "C"], "C_zm^l (Eq. 10), C_zm^1 = C_z^1"),
    "s{b}/tokens_per_layer": (["L_b"], "tokens (incl. [CLS] and the fused token) entering layer l's FFN"),
    "s{b}/flops_executed": ([], "Eq. 15 executed FLOPs: sum over executed layers of layer + fusion + head FLOPs"),
    "s{b}/flops_full": ([], "Eq. 15 baseline: L layers at the real length + one head"),
    "s{b}/l{l}/hidden": (["T_l", "D"], "h^l of sample b run alone: rows [CLS], kept tokens in position order, "
                                       "fused token"),
    "s{b}/l{l}/positions": (["T_l"], "input position of each row of hidden (0 = [CLS]; -k = fusion token made "
                                     "at layer k)"),
    "s{b}/l{l}/attention_memory": (["T_l-1"], "A_m^l after layer l's pruning, aligned with rows 1.. of hidden"),
    "s{b}/l{l}/fused_positions": (["p"], "position codes of the tokens fused at layer l, in position order "
                                         "(present only where p > 0)"),
    "s{b}/l{l}/fused_weights": (["p"], "alpha of those tokens (their A_m scores)"),
}
_AUTHORS = {
    **_SAMPLE,
    "s{b}/probabilities": (["C"], "softmax(C_zm) at the exit layer, or softmax(final classifier logits) where "
                                  "final_classifier"),
    "s{b}/flops_executed": ([], "Eq. 15 executed FLOPs (real lengths): layer + fusion + head per executed layer, "
                                "plus one head where final_classifier"),
    "s{b}/final_classifier": ([], "sample failed the exit test at layer L and is predicted by "
                                  "classifier(tanh(W_p h^L[CLS] + b_p)) (bert.pooler + classifier.*)"),
    "s{b}/macs_authors_code_executed": ([], "MACs the authors' evaluation loop adds up for this exit layer "
                                            "(flops.authors_code_sample_macs, max_len = pad_to, keep ratio r_ee)"),
    "s{b}/macs_authors_code_full": ([], "L (a(pad_to) + f(pad_to)): the authors' baseline MACs, a(n) = 2Dn^2 + 4D^2n, "
                                        "f(n) = 8D^2n"),
    "s{b}/l{l}/hidden": (["T_l", "D"], "h^l of sample b run alone: rows [CLS], kept tokens in selection-score "
                                       "order (ties: lower position), fused token"),
    "s{b}/l{l}/attention_memory": (["T_l-1"], "A_m^l after pruning, truncated: slot j < m holds the input's entry "
                                              "j (not its token's), the fused slot the mean over the W_l - 1 - m "
                                              "exiting padded slots"),
}
_PADDED = {
    "exit_layer": (["B"], "1-based exit layer per sample: first l with entropy < F, else L"),
    "prediction": (["B"], "argmax of softmax(C_zm) at the exit layer (ties -> lower class)"),
    "l{l}/attention_mask": (["B", "T_l"], "mask after layer l's pruning (fed to its FFN and to layer l+1); "
                                          "T_l = 1 + max_b(kept_b + fused_b)"),
    "l{l}/source_index": (["B", "T_l-1"], "at pruning layers: for each non-[CLS] row, 0-based index into the "
                                          "previous non-[CLS] rows; -1 fused token; -2 padding"),
    "l{l}/attention_memory": (["B", "T_l-1"], "A_m^l after layer l's pruning (compared where the mask is 1)"),
    "l{l}/hidden": (["B", "T_l", "D"], "h^l of the padded batch (compared where attention_mask is 1)"),
    "l{l}/cls_memory": (["B", "C"], "C_zm^l"),
    "l{l}/entropy": (["B"], "entropy of softmax(C_zm^l) (every sample runs every layer in this trace)"),
    "l{l}/exit": (["B"], "entropy < F, or l = L: exit test of layer l"),
}
_LOSS = {
    "total": ([], "Eq. 14: sum_l CE_l + sum_l KD_l"),
    "ce": (["L"], "Eq. 11 per exit, batch mean"),
    "kd": (["L"], "Eq. 13 per exit: tau^2 KL, direction and reduction in mpee_config"),
    "teacher_logits": (["B", "C"], "Eq. 12 teacher t = sum_l eta^l C_zm^l"),
    "eta": (["B", "L"], "Eq. 12 weights, softmax over layers"),
    "tokens": (["L", "B"], "tokens per sample entering layer l's FFN"),
    "memories": (["L", "B", "C"], "C_zm^l of the training forward"),
    "exit_logits": (["L", "B", "C"], "C_z^l of the training forward"),
    "grad/{key}": ([], "d total / d parameter (same axes as the parameter); for ports with autograd"),
}

DEFINITIONS: dict[str, dict[str, Def]] = {
    "eq01_layer_norm": {
        "x": (["B", "T", "D"], "LayerNorm input, mean ~100 per row (a one-pass E[x^2]-E[x]^2 loses digits in fp32)"),
        "weight": (["D"], "gamma"), "bias": (["D"], "beta"),
        "out": (["B", "T", "D"], "gamma (x - mean) / sqrt(var + eps) + beta, biased variance over D"),
    },
    "eq01_layer_norm_offset": {
        "x": (["B", "T", "D"], "LayerNorm input, mean 1e4 per row, spread ~1: a one-pass E[x^2]-E[x]^2 variance fails in fp64"),
        "weight": (["D"], "gamma"), "bias": (["D"], "beta"),
        "out": (["B", "T", "D"], "gamma (x - mean) / sqrt(var + eps) + beta, biased variance over D"),
    },
    "eq04_gelu": {"x": (["K1", "K2"], "GELU input"), "erf": (["K1", "K2"], "0.5 x (1 + erf(x / sqrt 2))"),
                  "tanh": (["K1", "K2"], "0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3)))")},
    "eq01_transformer_layer": {
        "h": (["B", "T", "D"], "h^{l-1}"), "attention_mask": _MASK, **_LAYER,
        "h_out": (["B", "T", "D"], "h^l = LN(Z~ + FFN(Z~))"), "z_tilde": (["B", "T", "D"], "Z~ = LN(h + MHSA(h))"),
        "probs": (["B", "H", "T", "T"], "attention probabilities (query, key)"),
        "mask_bias": (["B", "1", "1", "T"], _MASK_BIAS), "mhsa_out": (["B", "T", "D"], "MHSA(h), Eq. 2"),
        "ffn_out": (["B", "T", "D"], "FFN(Z~), Eq. 4"),
    },
    "eq02_mhsa": {
        "z": (["B", "T", "D"], "MHSA input"), "attention_mask": _MASK,
        **{k: v for k, v in _LAYER.items() if k[-1] in "qkvo"},
        "out": (["B", "T", "D"], "Concat[HA_1..HA_H] W^o^T + b^o"), "probs": (["B", "H", "T", "T"], "probabilities"),
        "q": (["B", "H", "T", "dh"], "z W_q^T + b_q split into heads"), "k": (["B", "H", "T", "dh"], "keys, split"),
        "v": (["B", "H", "T", "dh"], "values, split"), "context": (["B", "H", "T", "dh"], "probs @ v"),
    },
    "eq03_attention": {
        "q": (["B", "H", "T", "dh"], "queries"), "k": (["B", "H", "T", "dh"], "keys"),
        "v": (["B", "H", "T", "dh"], "values"), "attention_mask": _MASK,
        "scores": (["B", "H", "T", "T"], "q k^T / sqrt(dh) + mask bias (" + _MASK_BIAS + ")"),
        "probs": (["B", "H", "T", "T"], "softmax of scores over keys"), "context": (["B", "H", "T", "dh"], "probs @ v"),
    },
    "eq04_ffn": {
        "z_tilde": (["B", "T", "D"], "FFN input"), **{k: _LAYER[k] for k in ("w_1", "b_1", "w_2", "b_2")},
        "pre_act": (["B", "T", "F"], "z W_1^T + b_1"), "act": (["B", "T", "F"], "erf GELU(pre_act)"),
        "out": (["B", "T", "D"], "act W_2^T + b_2"),
    },
    "eq05_class_attention": {
        "probs": (["B", "H", "T", "T"], "probabilities (copy of eq01_transformer_layer/probs)"),
        "attention_mask": _MASK,
        "a_class": (["B", "N"], "probs[:, :, 0, 1:] (the [CLS] query row, keys 1..T-1) mean over heads; 0 at padding"),
    },
    "eq06_attention_memory": {
        "prev": (["B", "N"], "A_m^{l-1}"), "a_class": (["B", "N"], "A_class^l"),
        "memory": (["B", "N"], "(1 - beta) prev + beta a_class"), "memory_first": (["B", "N"], "A_m^1 = A_class^1"),
    },
    "eq07_num_kept": {
        "n": (["K"], "N, real non-[CLS] tokens"),
        **{f"m_{m}_{r}": (["K"], f"m for R_ee = {r} read as the fraction that {m}s: ceil(N {'(1 - R)' if m == 'exit' else 'R'}), "
                                 "exact on the decimal R") for m, r in (("exit", 0.3), ("exit", 0.7), ("keep", 0.7))},
    },
    "eq07_top_m": {
        "scores": (["B", "N"], "scores with ties (floor_sin)"), "valid": (["B", "N"], "real token"),
        "m": (["B"], "tokens to keep"), "keep": (["B", "N"], "the m valid tokens of highest score; ties -> lower index"),
    },
    "eq08_fuse": {
        "tokens": (["B", "N", "D"], "non-[CLS] tokens"), "alpha": (["B", "N"], "alpha_i (memory scores)"),
        "fuse": (["B", "N"], "token i is fused"), "h_eef": (["B", "D"], "sum over fused i of alpha_i tokens_i"),
    },
    "eq08_prune_tokens": _PRUNE,
    "eq08_prune_tokens_authors": _PRUNE,
    "eq09_exit_logits": {
        "h_cls": (["B", "D"], "h^l[CLS]"), "w_pool": (["D", "D"], "pooler W_p (out, in)"), "b_pool": (["D"], "b_p"),
        "w_cls": (["C", "D"], "classifier W_c (out, in)"), "b_cls": (["C"], "b_c"),
        "w_tanh": (["C", "D"], "literal Eq. 9 W_z (out, in)"), "b_tanh": (["C"], "b_z"),
        "pooled": (["B", "D"], "tanh(h W_p^T + b_p)"), "logits_pooler": (["B", "C"], "pooled W_c^T + b_c (head='pooler')"),
        "logits_tanh": (["B", "C"], "tanh(h W_z^T + b_z) (head='tanh')"),
    },
    "eq10_classifier_memory": {
        "prev": (["B", "C"], "C_zm^{l-1}"), "logits": (["B", "C"], "C_z^l"),
        "logits_large": (["B", "C"], "logits of magnitude up to 1000: exp() overflows in fp32 and fp64"),
        "memory": (["B", "C"], "(1 - lam) prev + lam logits"), "memory_first": (["B", "C"], "C_zm^1 = C_z^1"),
        "probabilities": (["B", "C"], "softmax(memory)"), "entropy": (["B"], "natural-log entropy of softmax(memory)"),
        "exit": (["B"], "entropy < threshold (strict)"),
        "entropy_large": (["B"], "entropy of softmax(logits_large) computed by log-softmax: finite, ~0"),
        "probabilities_large": (["B", "C"], "softmax(logits_large): subtract the row max before exp"),
    },
    "eq11_cross_entropy": {"memories": (["L", "B", "C"], "C_zm^l"), "labels": (["B"], "class labels"),
                           "ce": (["L"], "-log softmax(C_zm^l)[label], mean over B")},
    "eq12_teacher": {
        "memories": (["L", "B", "C"], "C_zm^l (copy of eq11)"), "w_eta": (["C", "C"], "W_eta (out, in)"),
        "b_eta": (["C"], "b_eta"), "v": (["C"], "V"),
        "scores": (["L", "B"], "V . tanh(W_eta C_zm^l + b_eta)"), "eta": (["B", "L"], "softmax of scores over L"),
        "teacher": (["B", "C"], "t = sum_l eta^l C_zm^l"),
    },
    "eq13_kd_loss": {
        "memories": (["L", "B", "C"], "C_zm^l (students)"), "teacher": (["B", "C"], "t (copy of eq12)"),
        **{f"kd_{d}_{r}": (["L"], f"tau^2 KL({'student || teacher' if d == 'student_teacher' else 'teacher || student'}) "
                                  f"of softmax(./tau), {'summed over C' if r == 'batchmean' else 'mean over C'}, "
                                  "mean over B") for d in ("student_teacher", "teacher_student")
           for r in ("batchmean", "mean")},
    },
    "eq14_total_loss": {
        "l_ce": (["L"], "Eq. 11 output"), "l_kd": (["L"], "Eq. 13 output (student_teacher, batchmean)"),
        "teacher": (["B", "C"], "t"), "labels": (["B"], "labels"),
        "teacher_ce": ([], "CE of softmax(t), mean over B"), "total_paper": ([], "sum l_ce + sum l_kd"),
        "total_ce_only": ([], "sum l_ce"),
        "total_gamma": ([], "sum_l [(1 - gamma) l_ce + gamma l_kd] + gamma teacher_ce (authors' form)"),
        "ce_weights_depth": (["L"], "w_l = L l / sum_k k, l = 1..L (ce_weighting='depth', L12)"),
        "total_depth": ([], "sum_l w_l l_ce + sum l_kd with w = ce_weights_depth"),
    },
    "eq15_flops": {
        "layer_cases": (["K", "2"], "(n_att, n_ffn) pairs"), "n_att": (["L_b"], "tokens entering attention per layer"),
        "n_ffn": (["L_b"], "tokens entering the FFN per layer"), "num_fused": (["L_b"], "p fused per layer"),
        "layer_flops": (["K"], "8 n_att D^2 + 4 n_att^2 D + 4 n_ffn D F"),
        "head_flops_pooler": ([], "2 D^2 + 2 D C"), "head_flops_tanh": ([], "2 D C"),
        "fusion_flops": ([], "2 p D for p = max(num_fused) (the one non-zero entry)"),
        "sample_per_layer": (["L_b"], "layer_flops(n_att, n_ffn) + 2 num_fused D + head_flops_pooler"),
        "sample_executed": ([], "sum of sample_per_layer"),
        "sample_full": ([], "num_layers * layer_flops(n_att[0], n_att[0]) + head_flops_pooler"),
        "speedup": ([], "rho of a two-sample batch, this sample and one that runs in full: "
                        "(sample_full + sample_full) / (sample_executed + sample_full) (ratio of sums)"),
    },
    "e2e_infer": {**_E2E_IN, **_SAMPLE},
    "e2e_infer_ceil": {**_E2E_IN, **_SAMPLE},
    "e2e_real": {**_E2E_IN, **_SAMPLE},
    "e2e_padded": {**_E2E_IN, **_PADDED},
    "e2e_loss": {**_E2E_IN, **_LOSS},
    "e2e_authors": {**_E2E_IN, **_AUTHORS},
}


def pattern(name: str) -> str:
    """``s3/l2/hidden`` -> ``s{b}/l{l}/hidden``; ``param/bert.x`` -> ``param/{key}``."""
    for prefix in ("param/", "grad/"):
        if name.startswith(prefix):
            return prefix + "{key}"
    name = re.sub(r"^s\d+/", "s{b}/", name)
    return re.sub(r"(^|/)l\d+/", r"\1l{l}/", name)


def describe(entry: str, name: str) -> Def:
    """(axes, definition) of one tensor; KeyError names what is missing."""
    try:
        return DEFINITIONS[entry][pattern(name)]
    except KeyError:
        raise KeyError(f"mpee_ref/vectors/definitions.py: no definition for {entry}/{name} "
                       f"(pattern {pattern(name)!r})") from None
