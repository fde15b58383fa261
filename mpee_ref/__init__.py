"""mpee_ref: a reference implementation of MPEE (Kong et al., 2022) on a BERT written from its equations."""
from .config import BertConfig
from .encoder import BertEncoder, EncoderOutput

__all__ = ["BertConfig", "BertEncoder", "EncoderOutput"]
__version__ = "0.1.0"
