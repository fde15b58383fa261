"""mpee_ref: a reference implementation of MPEE (Kong et al., 2022) on a BERT written from its equations.

Public API (stable):

    load_tokenizer(folder)           BERT WordPiece tokenizer from a converted folder's vocab.txt
    load_encoder(folder)             BertEncoder: encoder(input_ids, attention_mask, token_type_ids)
                                     -> EncoderOutput(last_hidden_state, hidden_states, attentions)
    load_mpee(folder, **overrides)   MPEEModel (trained folder, or any converted encoder folder with
                                     untrained heads); model.infer(texts, threshold=F, r_ee=R)
    convert_checkpoint(src, dst)     HF BERT folder -> mpee_ref folder
    BertConfig, MPEEConfig           typed, frozen configs

The equations themselves live in ``mpee_ref.encoder.equations`` (Eqs. 1-4),
``mpee_ref.token_exit`` (5-8), ``mpee_ref.layer_exit`` (9-10), ``mpee_ref.losses`` (11-14) and
``mpee_ref.flops`` (15).
"""
from .config import BertConfig
from .encoder import BertEncoder, EncoderOutput
from .io import convert_checkpoint, load_encoder, load_tokenizer
from .mpee import InferenceOutput, LayerTrace, MPEEConfig, MPEEModel, SampleResult, load_mpee, save_mpee

__all__ = ["BertConfig", "BertEncoder", "EncoderOutput", "InferenceOutput", "LayerTrace", "MPEEConfig",
           "MPEEModel", "SampleResult", "convert_checkpoint", "load_encoder", "load_mpee", "load_tokenizer",
           "save_mpee"]
__version__ = "0.1.0"
