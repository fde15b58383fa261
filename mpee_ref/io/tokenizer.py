"""BERT WordPiece tokenizer built from ``vocab.txt`` with the ``tokenizers`` library.

The pipeline is HF ``BertTokenizerFast``'s, piece by piece: ``BertNormalizer`` (clean text, spaces
around CJK characters, accent stripping and lower-casing per ``do_lower_case``/``strip_accents``),
``BertPreTokenizer`` (whitespace + punctuation), ``WordPiece`` (``[UNK]``, ``##`` continuation, 100
characters per word at most) and ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` templates with token
type ids 0 / 1. A batch is right-padded with ``[PAD]`` to its longest sequence.
``tests/test_io_tokenizer.py`` checks ids, type ids and masks equal HF's.

Truncation of pairs comes in two flavours that differ only when the segments must lose an odd number
of tokens and end up the same length:

* ``"longest_first"`` (default): the ``tokenizers`` (Rust) rule used by HF ``BertTokenizerFast`` and
  by every HF BERT tokenizer since transformers 5;
* ``"longest_first_slow"``: the pure-Python rule of HF's old slow ``BertTokenizer`` (drop one token at
  a time from the longer segment, from the second on ties), i.e. what the authors' code, built on an
  old transformers, computed. Single sentences truncate identically under both.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ..config import BertConfig
from .convert import CONFIG_NAME, VOCAB_NAME, read_tokenizer_options

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
TRUNCATION_RULES = ("longest_first", "longest_first_slow")


@dataclass(frozen=True)
class Encoded:
    """A tokenized batch: three ``(B, T)`` int64 tensors, right-padded."""

    input_ids: Tensor        # (B, T)
    attention_mask: Tensor   # (B, T) 1 for real tokens, 0 for padding
    token_type_ids: Tensor   # (B, T) 0 for segment A (and padding), 1 for segment B


def read_vocab(path: str | Path) -> dict[str, int]:
    """``vocab.txt`` -> {token: line index}; a repeated token keeps its last index (as HF's loader)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such vocabulary file")
    vocab: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                vocab[line.rstrip("\n")] = i
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{path}: special tokens {missing} not in the vocabulary")
    return vocab


class WordPieceTokenizer:
    """Callable BERT tokenizer: ``tok(texts, pairs=None, max_length=None, padding=True) -> Encoded``.

    Args:
        vocab_file: ``vocab.txt``, one token per line, id = line number.
        do_lower_case: lower-case (and, with ``strip_accents=None``, strip accents) before WordPiece.
        strip_accents: ``None`` follows ``do_lower_case`` (HF's rule); ``True``/``False`` force it.
        max_length: default truncation length, capped at ``model_max_length``.
        model_max_length: the model's ``max_position_embeddings``.
        truncation: ``"longest_first"`` (HF fast) or ``"longest_first_slow"`` (HF slow, authors' code).
    """

    def __init__(self, vocab_file: str | Path, do_lower_case: bool = True,
                 strip_accents: bool | None = None, max_length: int = 128,
                 model_max_length: int = 512, truncation: str = "longest_first"):
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
        vocab = read_vocab(vocab_file)
        self.vocab_file = Path(vocab_file)
        self.do_lower_case = bool(do_lower_case)
        self.strip_accents = strip_accents
        if not isinstance(model_max_length, int) or model_max_length < 2:
            raise ValueError(f"model_max_length must be an int >= 2, got {model_max_length!r}")
        self.model_max_length = model_max_length
        self.max_length = self._check_max_length(max_length, "max_length")
        if truncation not in TRUNCATION_RULES:
            raise ValueError(f"truncation must be one of {TRUNCATION_RULES}, got {truncation!r}")
        self.truncation = truncation
        tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##",
                                         max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=strip_accents,
                                                    lowercase=self.do_lower_case)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        self.cls_token_id, self.sep_token_id = vocab["[CLS]"], vocab["[SEP]"]
        self.pad_token_id, self.unk_token_id = vocab["[PAD]"], vocab["[UNK]"]
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_token_id), ("[SEP]", self.sep_token_id)])
        self._tok = tok
        self._truncation: int | None = None
        self._lock = threading.Lock()   # the Rust tokenizer's truncation setting is shared state
        self.vocab_size = tok.get_vocab_size()

    def _check_max_length(self, value: int, name: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 2:
            raise ValueError(f"{name} must be an int >= 2 (room for [CLS] and [SEP]), got {value!r}")
        return min(value, self.model_max_length)

    def __call__(self, texts: str | Sequence[str], pairs: str | Sequence[str] | None = None,
                 max_length: int | None = None, padding: bool = True) -> Encoded:
        """Tokenize a batch (a single string is a batch of one).

        Args:
            texts: B first segments.
            pairs: B second segments, or None.
            max_length: truncation length (default ``self.max_length``), capped at the model's
                ``max_position_embeddings``; pairs are truncated longest-first.
            padding: pad to the longest sequence; with ``False`` all sequences must be equally long.
        Returns:
            :class:`Encoded` with ``(B, T)`` int64 tensors.
        """
        texts = self._as_batch(texts, "texts")
        if pairs is not None:
            pairs = self._as_batch(pairs, "pairs")
            if len(pairs) != len(texts):
                raise ValueError(f"pairs has {len(pairs)} items, expected {len(texts)} like texts")
        n = self.max_length if max_length is None else self._check_max_length(max_length, "max_length")
        if pairs is not None and n < 3:
            raise ValueError(f"max_length must be >= 3 for pairs ([CLS] A [SEP] B [SEP]), got {n}")
        with self._lock:
            if pairs is not None and self.truncation == "longest_first_slow":
                rows = self._encode_pairs_slow(texts, pairs, n)
            else:
                if self._truncation != n:
                    self._tok.enable_truncation(n, strategy="longest_first")
                    self._truncation = n
                inputs = texts if pairs is None else list(zip(texts, pairs))
                rows = [(e.ids, e.type_ids) for e in self._tok.encode_batch(inputs, add_special_tokens=True)]
        return self._pad(rows, padding)

    def _encode_pairs_slow(self, texts: list[str], pairs: list[str], n: int) -> list[tuple[list[int], list[int]]]:
        """[CLS] A [SEP] B [SEP] with HF-slow longest-first truncation (one token at a time)."""
        self._tok.no_truncation()
        self._truncation = None
        a_encs = self._tok.encode_batch(texts, add_special_tokens=False)
        b_encs = self._tok.encode_batch(pairs, add_special_tokens=False)
        rows = []
        for ea, eb in zip(a_encs, b_encs):
            a, b = list(ea.ids), list(eb.ids)
            while len(a) + len(b) > n - 3:
                if len(a) > len(b):
                    a.pop()
                else:
                    b.pop()
            ids = [self.cls_token_id, *a, self.sep_token_id, *b, self.sep_token_id]
            rows.append((ids, [0] * (len(a) + 2) + [1] * (len(b) + 1)))
        return rows

    def _pad(self, rows: list[tuple[list[int], list[int]]], padding: bool) -> Encoded:
        lengths = [len(ids) for ids, _ in rows]
        T = max(lengths)
        if not padding and min(lengths) != T:
            raise ValueError(f"padding=False needs sequences of equal length, got lengths {lengths}")
        B = len(rows)
        input_ids = torch.full((B, T), self.pad_token_id, dtype=torch.int64)     # (B, T)
        attention_mask = torch.zeros((B, T), dtype=torch.int64)                   # (B, T)
        token_type_ids = torch.zeros((B, T), dtype=torch.int64)                   # (B, T)
        for b, ((ids, type_ids), t) in enumerate(zip(rows, lengths)):
            input_ids[b, :t] = torch.tensor(ids, dtype=torch.int64)
            attention_mask[b, :t] = 1
            token_type_ids[b, :t] = torch.tensor(type_ids, dtype=torch.int64)
        return Encoded(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

    @staticmethod
    def _as_batch(x: str | Sequence[str], name: str) -> list[str]:
        if isinstance(x, str):
            return [x]
        if not isinstance(x, Sequence) or len(x) == 0:
            raise ValueError(f"{name} must be a string or a non-empty sequence of strings, got {x!r:.80}")
        bad = [i for i, s in enumerate(x) if not isinstance(s, str)]
        if bad:
            raise ValueError(f"{name}[{bad[0]}] is {type(x[bad[0]]).__name__}, expected str")
        return list(x)

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece strings of ``text`` without special tokens or truncation."""
        with self._lock:
            self._tok.no_truncation()
            self._truncation = None
            return self._tok.encode(text, add_special_tokens=False).tokens

    def decode_tokens(self, ids: Tensor | Sequence[int]) -> list[str]:
        """The WordPiece string of each id (``[CLS]``, ``##ing``...), e.g. for a per-token trace."""
        if isinstance(ids, Tensor):
            if ids.dim() != 1:
                raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        out = []
        for i in ids:
            token = self._tok.id_to_token(int(i))
            if token is None:
                raise ValueError(f"id {i} is outside the vocabulary [0, {self.vocab_size})")
            out.append(token)
        return out


def load_tokenizer(folder: str | Path, max_length: int = 128,
                   truncation: str = "longest_first") -> WordPieceTokenizer:
    """The tokenizer of a checkpoint folder (converted or HF): ``vocab.txt`` + tokenizer options.

    ``do_lower_case``/``strip_accents`` come from ``config.json`` (converted) or ``tokenizer_config.json``
    (HF), default uncased; the truncation cap is the config's ``max_position_embeddings`` (512 if no
    config). ``truncation``: see :class:`WordPieceTokenizer`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such checkpoint folder")
    opts = read_tokenizer_options(folder)
    model_max = 512
    if (folder / CONFIG_NAME).is_file():
        model_max = BertConfig.from_json_file(folder / CONFIG_NAME).max_position_embeddings
    return WordPieceTokenizer(folder / VOCAB_NAME, do_lower_case=opts["do_lower_case"],
                              strip_accents=opts["strip_accents"], max_length=max_length,
                              model_max_length=model_max, truncation=truncation)
