"""Command-line pieces shared by the experiment commands: ``--set key=value`` for any
:class:`~mpee_ref.mpee.MPEEConfig` field, presets, ablations, the plain (no-exit) baseline config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any, Iterable, Mapping, Sequence

from ..mpee.config import ABLATIONS, MPEEConfig

PRESETS = ("paper", "recipe", "authors")
MODES = ("mpee", "plain")

#: The switches that make an MPEE model the plain fine-tuning baseline: no token exits, no sample
#: exits, no distillation, λ = 1 (the last head's "memory" is its own logits).
PLAIN_SWITCHES: dict[str, Any] = dict(token_exit=False, layer_exit=False, use_kd=False, classifier_memory=False)

def check_cli_numbers(threads: int | None = None, **flags: int | None) -> None:
    """Refuse non-positive integer flags (``batch_size=`` is reported as ``--batch-size``), then apply
    ``--threads`` with ``torch.set_num_threads``."""
    import torch

    for name, value in {"threads": threads, **flags}.items():
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if threads is not None:
        torch.set_num_threads(threads)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _parse_value(key: str, annotation: str, raw: str, flag: str = "--set") -> Any:
    text = raw.strip()
    optional = "None" in annotation
    if optional and text.lower() in ("none", "null", ""):
        return None
    base = annotation.replace("| None", "").strip()
    try:
        if base == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
        if base == "int":
            return int(text)
        if base == "float":
            return float(text)
        for name, kind in (("tuple[int", int), ("tuple[float", float)):
            if base.startswith(name):
                return tuple(kind(x) for x in text.replace(" ", "").strip("()[]").split(",") if x)
    except ValueError:
        raise ValueError(f"{flag} {key}={raw}: expected {annotation}, got {raw!r}") from None
    return text


def comma_list(text: str, kind: type, flag: str) -> tuple[Any, ...]:
    """``"0.1,0.3"`` -> ``(0.1, 0.3)`` (each item converted by ``kind``); a ValueError naming ``flag``
    for a bad item or an empty list."""
    try:
        values = tuple(kind(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated {kind.__name__} values, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag}: expected at least one value, got {text!r}")
    return values


def parse_pairs(pairs: Iterable[str], flag: str = "--set") -> dict[str, str]:
    """``["a=1", "b-c=x"]`` -> ``{"a": "1", "b_c": "x"}`` (values still text)."""
    out: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"{flag}: expected key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        out[key.strip().replace("-", "_")] = raw
    return out


def typed_fields(cls: type, raw: Mapping[str, str], flag: str = "--set") -> dict[str, Any]:
    """Text values of fields of the dataclass ``cls``, parsed by the field's type (bool: true/false/1/0;
    ``None``/``null`` for optional fields; tuples as comma lists); unknown keys raise ``ValueError``
    listing the known ones."""
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(types))
    if unknown:
        raise ValueError(f"{flag}: unknown {cls.__name__} field {unknown[0]!r}; known fields: {sorted(types)}")
    return {key: _parse_value(key, types[key], text, flag) for key, text in raw.items()}


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["threshold=0.2", "prune_layers=2,4"]`` -> ``{"threshold": 0.2, "prune_layers": (2, 4)}``
    (:class:`MPEEConfig` fields, see :func:`typed_fields`)."""
    return typed_fields(MPEEConfig, parse_pairs(pairs, "--set"), "--set")


def build_config(num_labels: int, num_layers: int, *, preset: str = "paper", ablate: Sequence[str] = (),
                 overrides: dict[str, Any] | None = None, mode: str = "mpee") -> MPEEConfig:
    """The training config: preset, then each ``ablate`` (Table 2), then ``overrides``; ``mode="plain"``
    then forces :data:`PLAIN_SWITCHES` (an override that contradicts them is an error), except that an
    explicit ``token_exit=True`` keeps token pruning on: the last head's CE on a pruned forward pass
    (pruning-aware fine-tuning of the top, L14 in docs/interpretation/layer_exit_and_losses.md)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    overrides = dict(overrides or {})
    if "num_labels" in overrides and overrides["num_labels"] != num_labels:
        raise ValueError(f"--set num_labels={overrides['num_labels']}: the task has {num_labels} classes")
    overrides.pop("num_labels", None)
    cfg = {"paper": lambda: MPEEConfig.paper(num_labels), "recipe": lambda: MPEEConfig.recipe(num_labels),
           "authors": lambda: MPEEConfig.authors(num_labels, num_layers)}[preset]()
    for name in ablate:
        if name.lower().removeprefix("w/o ").strip() not in ABLATIONS:
            raise ValueError(f"--ablate: unknown component {name!r}; expected one of {ABLATIONS}")
        cfg = cfg.without(name)
    cfg = replace(cfg, **overrides)
    if mode == "plain":
        switches = dict(PLAIN_SWITCHES)
        if overrides.get("token_exit") is True:     # asked for: the last head's CE with tokens pruned (L14)
            del switches["token_exit"]
        clash = {k: v for k, v in overrides.items() if k in switches and v != switches[k]}
        if clash:
            raise ValueError(f"--mode plain turns off layer exits, distillation and the classifier memory "
                             f"(token exits unless --set token_exit=true); --set {clash} contradicts it")
        if cfg.gamma is not None:          # the authors' γ weighting needs distillation; plain has none
            cfg = replace(cfg, gamma=None)
        cfg = replace(cfg, **switches)
    return cfg
