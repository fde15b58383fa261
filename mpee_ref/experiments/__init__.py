"""Experiment tools: ``train`` (fine-tuning, Eq. 14), ``evaluate`` (metrics and rho, Eq. 15), and the
pieces they share (``batching``: tokenised data, padding, the seeded sampler; ``options``: presets,
ablations, ``--set key=value``)."""
from .batching import EncodedDataset, EpochBatchSampler, collate, encode_examples
from .evaluate import evaluate_encoded, evaluate_model, run_inference, summarize
from .options import PLAIN_SWITCHES, build_config, parse_overrides
from .train import TrainArgs, latest_checkpoint, linear_schedule, save_checkpoint, train_model

__all__ = ["EncodedDataset", "EpochBatchSampler", "collate", "encode_examples", "evaluate_encoded",
           "evaluate_model", "run_inference", "summarize", "PLAIN_SWITCHES", "build_config", "parse_overrides",
           "TrainArgs", "latest_checkpoint", "linear_schedule", "save_checkpoint", "train_model"]
