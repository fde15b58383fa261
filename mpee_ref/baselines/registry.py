r"""The methods by name: which model and config class, how each is trained (its stages) and which
inference knob a sweep turns, with the default grid of that knob.

A sweep setting is always one number (so every method's trade-off curve is a list of scalar
settings); :attr:`MethodSpec.infer_kwargs` turns it into the keyword arguments of the model's ``infer``.
PoWER-BERT's setting is the decay q of a geometric retention configuration (below).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .common import BaselineModel, HeadConfig
from .deebert import DeeBERT, DeeBERTConfig
from .fastbert import FastBERT, FastBERTConfig
from .pabee import PABEE, PABEEConfig
from .power_bert import PowerBERT, PowerBERTConfig
from .static import StaticConfig, StaticTruncation


def geometric_retention(q: float, num_layers: int) -> tuple[float, ...]:
    r"""PoWER-BERT retention configuration :math:`r_j = q^j`, j = 1..L (non-increasing, in (0, 1]).

    PoWER-BERT learns its configuration (soft-extract search); this project sweeps fixed ones
    (docs/BASELINES.md), and the geometric family is the one-number family we sweep: q = 1 keeps
    every word vector, q = 0.7 keeps 70% after layer 1, 49% after layer 2, ...
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"retention decay q must be in (0, 1], got {q!r}")
    return tuple(q ** j for j in range(1, num_layers + 1))


@dataclass(frozen=True)
class MethodSpec:
    """One baseline.

    Attributes:
        name: the ``--method`` value.
        model, config: its model and config classes.
        stages: the training stages in order (values of the config's ``stage``); ``()`` = one stage.
            Each stage after the first starts from the previous stage's model.
        knob: the sweep setting's name (a key of a sweep point's ``setting``); None = no knob
            (static truncation has one operating point).
        grid: the default values of ``knob`` for ``sweep``: entropy thresholds are dense below ln 2 ≈ 0.693
            (a binary task's largest entropy), where a frozen backbone's shallow classifiers start to exit.
        infer_kwargs: ``(value, num_layers) -> infer() keyword arguments`` for one setting.
    """

    name: str
    model: type[BaselineModel]
    config: type[HeadConfig]
    stages: tuple[str, ...]
    knob: str | None
    grid: tuple[float, ...]
    infer_kwargs: Callable[[float, int], dict[str, Any]]


METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("static", StaticTruncation, StaticConfig, (), None, (), lambda v, L: {}),
    MethodSpec("deebert", DeeBERT, DeeBERTConfig, ("backbone", "ramps"), "entropy_threshold",
               (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.63, 0.65, 0.67, 0.68, 0.69, 0.7),
               lambda v, L: {"entropy_threshold": v}),
    MethodSpec("fastbert", FastBERT, FastBERTConfig, ("backbone", "distill"), "speed",
               (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 1.0),
               lambda v, L: {"speed": v}),
    MethodSpec("pabee", PABEE, PABEEConfig, (), "patience", (1, 2, 3, 4, 5),
               lambda v, L: {"patience": int(v)}),
    MethodSpec("power_bert", PowerBERT, PowerBERTConfig, (), "retention_decay",
               (1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5),
               lambda v, L: {"retention": geometric_retention(v, L)}),
)}


def get_method(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name`` (``-`` and ``_`` are the same), or a ValueError listing them."""
    key = name.replace("-", "_")
    if key not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)} (or 'mpee')")
    return METHODS[key]
