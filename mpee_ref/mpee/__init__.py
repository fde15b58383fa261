"""MPEE: the model wiring Eqs. (1)-(15) together, its config and its checkpoints."""
from .checkpoint import load_mpee, save_mpee
from .config import ABLATIONS, MPEEConfig, scale_layers
from .model import InferenceOutput, LayerTrace, MPEEModel, SampleResult, TrainOutput

__all__ = ["ABLATIONS", "InferenceOutput", "LayerTrace", "MPEEConfig", "MPEEModel", "SampleResult",
           "TrainOutput", "load_mpee", "save_mpee", "scale_layers"]
