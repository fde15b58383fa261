"""The WordPiece tokenizer against two HF oracles: the pure-Python ``BertTokenizerLegacy`` (independent
code: BasicTokenizer + WordpieceTokenizer) and ``BertTokenizerFast`` built from the same vocab.txt.

Ids, token type ids and attention masks must be identical on a varied list (accents, CJK, punctuation,
control characters, over-long words, very long text, pairs, empty strings), uncased and cased.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mpee_ref.io import Encoded, WordPieceTokenizer, load_tokenizer

transformers = pytest.importorskip("transformers")
from transformers import BertTokenizerFast  # noqa: E402
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy  # noqa: E402

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "quick", "brown", "fox", "##es", "jump",
              "##s", "over", "lazy", "dog", ".", ",", "!", "?", "'", "cafe", "café", "Café", "北", "京", "a",
              "b", "##a", "##b", "hello", "Hello", "world", "naive", "##ive", "na", "t", "don", "-", "(", ")",
              "1", "##0", "##00", "$", "%", "é"]

TEXTS = [
    "Hello, World!", "The quick brown fox jumps over the lazy dog.", "Café déjà vu — naïve façade, Ångström",
    "我爱北京天安门 and 東京 Tokyo", "Wait... what?!? (yes) [no] {maybe} \"quoted\" 'single' #hash $100 50% a&b",
    "emoji 😀 test", "tab\tand\nnewline  and   spaces", "control\x00char\ufffd and\u200bzero width",
    "non-breaking\u00a0space", "", "   ", "a" * 150 + " word", "3.14159 1,000,000 2nd don't can't I'm",
    "ÉCOLE ÜBER straße ǅ", "foxes jumps dogs naive",
]
PAIRS = ["Is it?", "", "Another sentence about the lazy dog.", "北京", "x " * 200, "yes", "no", "maybe",
         "ok", "a b", "c", "d", "e", "f", "g"]
LONG = "the quick brown fox jumps over the lazy dog " * 60


def hf_encode(hf, texts, pairs, n: int) -> Encoded:
    out = hf(texts, pairs, padding=True, truncation="longest_first", max_length=n, return_tensors="pt",
             return_token_type_ids=True, return_attention_mask=True)
    return Encoded(out["input_ids"], out["attention_mask"], out["token_type_ids"])


def assert_same(a: Encoded, b: Encoded) -> None:
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == torch.int64 and x.shape == y.shape, (name, x.shape, y.shape)
        if not torch.equal(x, y.long()):
            row = int((x != y).any(dim=1).nonzero()[0])
            raise AssertionError(f"{name} differs in row {row}: {x[row].tolist()} vs {y[row].tolist()}")


def compare_with_hf(vocab: Path, lower: bool, max_lengths=(128, 12)) -> None:
    """Fast oracle with our default truncation, slow (Python) oracle with ``longest_first_slow``."""
    oracles = [(BertTokenizerFast(vocab=str(vocab), do_lower_case=lower), "longest_first"),
               (BertTokenizerLegacy(vocab_file=str(vocab), do_lower_case=lower), "longest_first_slow")]
    for hf, rule in oracles:
        ours = WordPieceTokenizer(vocab, do_lower_case=lower, truncation=rule)
        for n in max_lengths:
            assert_same(ours(TEXTS + [LONG], max_length=n), hf_encode(hf, TEXTS + [LONG], None, n))
            assert_same(ours(TEXTS, PAIRS, max_length=n), hf_encode(hf, TEXTS, PAIRS, n))
            assert_same(ours([LONG, "x"], [LONG[:300], LONG], max_length=n),
                        hf_encode(hf, [LONG, "x"], [LONG[:300], LONG], n))


@pytest.fixture()
def tiny_vocab(tmp_path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(TINY_VOCAB) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("lower", [True, False])
def test_tiny_vocab_matches_hf(tiny_vocab, lower):
    compare_with_hf(tiny_vocab, lower)


@pytest.mark.parametrize("lower", [True, False])
def test_real_vocab_matches_hf(minilm_dir, lower):
    compare_with_hf(minilm_dir / "vocab.txt", lower)


def test_real_vocab_default_truncation_is_128(minilm_dir):
    tok = load_tokenizer(minilm_dir)
    enc = tok([LONG, "short"])
    assert enc.input_ids.shape == (2, 128) and tok.max_length == 128
    assert enc.input_ids[0, -1] == 102 and enc.input_ids[1, :4].tolist() == [101, 2460, 102, 0]
    assert tok.decode_tokens(enc.input_ids[1, :3]) == ["[CLS]", "short", "[SEP]"]
    assert load_tokenizer(minilm_dir, max_length=1000).max_length == 512   # capped at P


def test_hand_example(tiny_vocab):
    tok = WordPieceTokenizer(tiny_vocab)
    enc = tok(["The quick foxes!", "Café"], pairs=["lazy dog", "北京"])
    # [CLS] the quick fox ##es ! [SEP] lazy dog [SEP]   /  [CLS] cafe [SEP] 北 京 [SEP] (uncased: é -> e)
    assert enc.input_ids.tolist() == [[2, 5, 6, 8, 9, 17, 3, 13, 14, 3], [2, 20, 3, 23, 24, 3, 0, 0, 0, 0]]
    assert enc.token_type_ids.tolist() == [[0, 0, 0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]]
    assert enc.attention_mask.tolist() == [[1] * 10, [1] * 6 + [0] * 4]
    assert tok.decode_tokens(enc.input_ids[0]) == ["[CLS]", "the", "quick", "fox", "##es", "!", "[SEP]",
                                                   "lazy", "dog", "[SEP]"]
    assert WordPieceTokenizer(tiny_vocab, do_lower_case=False).tokenize("Café") == ["Café"]
    # longest-first: the longer segment loses tokens first; 7 = 3 specials + 2 + 2
    enc = tok("the quick brown fox", pairs="lazy dog", max_length=7)
    assert enc.input_ids.tolist() == [[2, 5, 6, 3, 13, 14, 3]]
    assert tok("a b a b", padding=False).input_ids.tolist() == [[2, 25, 26, 25, 26, 3]]


def test_truncation_rules_differ_only_on_odd_ties(tiny_vocab):
    fast = WordPieceTokenizer(tiny_vocab)
    slow = WordPieceTokenizer(tiny_vocab, truncation="longest_first_slow")
    a, b = "the quick brown fox jumps", "a b a b a b a b"     # 6 and 8 tokens; room for 9 = 5 + 4 or 4 + 5
    # fast (Rust): the first segment gets floor(9/2) = 4 tokens; slow (Python): pops the second on ties
    assert fast(a, b, max_length=12).token_type_ids.sum() == 5 + 1
    assert slow(a, b, max_length=12).token_type_ids.sum() == 4 + 1
    assert torch.equal(fast(a, b, max_length=13).input_ids, slow(a, b, max_length=13).input_ids)  # even
    assert torch.equal(fast([a, b], max_length=4).input_ids, slow([a, b], max_length=4).input_ids)
    with pytest.raises(ValueError, match="truncation must be one of"):
        WordPieceTokenizer(tiny_vocab, truncation="only_first")


def test_load_tokenizer_reads_options_and_cap(tmp_path, tiny_vocab):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "vocab.txt").write_bytes(tiny_vocab.read_bytes())
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 9, "do_lower_case": False}))
    tok = load_tokenizer(folder)
    assert (tok.max_length, tok.do_lower_case) == (9, False)
    assert tok(["the " * 20]).input_ids.shape == (1, 9)
    assert tok(["the " * 20], max_length=50).input_ids.shape == (1, 9)     # call-time value capped too
    assert tok("Café").input_ids.tolist() == [[2, 22, 3]]                 # cased vocab entry


def test_errors(tiny_vocab, tmp_path):
    tok = WordPieceTokenizer(tiny_vocab)
    with pytest.raises(ValueError, match="pairs has 1 items, expected 2 like texts"):
        tok(["a", "b"], pairs=["c"])
    with pytest.raises(ValueError, match=r"texts\[1\] is int, expected str"):
        tok(["a", 3])
    with pytest.raises(ValueError, match="texts must be a string or a non-empty sequence"):
        tok([])
    with pytest.raises(ValueError, match=r"max_length must be an int >= 2 .*got 1"):
        tok("a", max_length=1)
    with pytest.raises(ValueError, match="max_length must be >= 3 for pairs"):
        tok("a", pairs="b", max_length=2)
    with pytest.raises(ValueError, match=r"padding=False needs sequences of equal length, got lengths \[3, 4\]"):
        tok(["a", "a b"], padding=False)
    with pytest.raises(ValueError, match=r"id 46 is outside the vocabulary \[0, 46\)"):
        tok.decode_tokens([2, 46])
    bad = tmp_path / "bad.txt"
    bad.write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ValueError, match=r"bad\.txt: special tokens \['\[CLS\]', '\[SEP\]'\] not in the vocabulary"):
        WordPieceTokenizer(bad)
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        load_tokenizer(tmp_path / "nope")
