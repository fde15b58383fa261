"""BERT encoder, Eqs. (1)-(4): pure equations (``equations``) and the module wiring them (``model``)."""
from .model import BertEncoder, BertLayer, EncoderOutput

__all__ = ["BertEncoder", "BertLayer", "EncoderOutput"]
