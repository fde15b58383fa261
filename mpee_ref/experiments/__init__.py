"""Experiment tools: ``train`` (fine-tuning, Eq. 14), ``evaluate`` (metrics and rho, Eq. 15), and the
pieces they share (``batching``: tokenised data, padding, the seeded sampler; ``options``: presets,
ablations, ``--set key=value``; ``flags``: command-line flags from dataclass fields; ``loading``: the
model + data split loader of the inference commands; ``checkpointing``, ``distributed``, ``monitor``,
``runs``: the parts of a training run)."""
from .batching import EncodedDataset, EpochBatchSampler, collate, encode_examples
from .checkpointing import latest_checkpoint, load_train_state, save_checkpoint
from .evaluate import Evaluation, evaluate_encoded, evaluate_model, run_inference, summarize
from .options import PLAIN_SWITCHES, build_config, parse_overrides
from .train import TrainArgs, linear_schedule, train_model

__all__ = ["EncodedDataset", "EpochBatchSampler", "collate", "encode_examples", "Evaluation", "evaluate_encoded",
           "evaluate_model", "run_inference", "summarize", "PLAIN_SWITCHES", "build_config", "parse_overrides",
           "TrainArgs", "latest_checkpoint", "linear_schedule", "load_train_state", "save_checkpoint", "train_model"]
