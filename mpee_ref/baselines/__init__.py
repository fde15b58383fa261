"""The paper's baselines on MPEE's backbone, data and Eq. (15) FLOPs: static truncation, DeeBERT,
FastBERT, PABEE and PoWER-BERT (TR-BERT is left out: docs/BASELINES.md says why).

Each module holds the method's defining equations as pure functions and one model class with a
training ``forward`` (returning :class:`BaselineTrainOutput` with the method's loss) and a real-exit
``infer`` (returning :class:`BaselineInferenceOutput`: per-sample prediction, exit layer, tokens per
layer, FLOPs).
"""
from .common import (BaselineInferenceOutput, BaselineModel, BaselineSample, BaselineTrainOutput, HeadConfig,
                     baseline_sample_flops)
from .deebert import DEEBERT_STAGES, DeeBERT, DeeBERTConfig, deebert_loss
from .fastbert import FASTBERT_STAGES, FastBERT, FastBERTConfig, fastbert_distill_loss, fastbert_uncertainty
from .pabee import PABEE, PABEEConfig, pabee_patience_step, pabee_should_exit, pabee_weighted_loss
from .power_bert import PowerBERT, PowerBERTConfig, power_significance
from .static import StaticConfig, StaticTruncation

__all__ = ["BaselineInferenceOutput", "BaselineModel", "BaselineSample", "BaselineTrainOutput",
           "HeadConfig", "baseline_sample_flops", "DEEBERT_STAGES", "DeeBERT", "DeeBERTConfig", "deebert_loss",
           "FASTBERT_STAGES", "FastBERT", "FastBERTConfig", "fastbert_distill_loss", "fastbert_uncertainty",
           "PABEE", "PABEEConfig", "pabee_patience_step", "pabee_should_exit", "pabee_weighted_loss",
           "PowerBERT", "PowerBERTConfig", "power_significance", "StaticConfig", "StaticTruncation"]
