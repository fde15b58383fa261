r"""MPEE hyper-parameters: one typed, frozen config, every field tagged with its paper symbol.

Three presets:

* :meth:`MPEEConfig.paper` (the default constructor): the paper's equations as printed, with our
  resolution of each ambiguity (docs/INTERPRETATION.md says why).
* :meth:`MPEEConfig.authors`: the settings of the authors' public code (JunKong5/MPEE; see
  docs/INTERPRETATION.md): keep 70% at layers 4/7/10 (scaled to depth) counted over inputs padded
  to 128, raw attention until the first pruning layer, fused-token memory = mean, the memory left in
  the old token order after pruning, KL(teacher‖student) with element-wise mean, γ = 0.1, τ = 3,
  and a separate final classifier for exit L.
* :meth:`MPEEConfig.recipe`: the paper preset with the exit-head recipe that makes shallow heads
  learn on badly conditioned backbones (``head_norm``; a deviation, docs L10).

The paper's six ablations (Table 2) and Table 3's token score are switches: see :meth:`without`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..config import check_field_types, read_json_object
from ..layer_exit.heads import HEAD_KINDS
from ..losses.equations import CE_WEIGHTINGS, KD_DIRECTIONS, KD_REDUCTIONS
from ..token_exit.equations import FUSED_MEMORIES, FUSIONS, MEMORY_ALIGNMENTS, R_EE_MEANINGS, TOKEN_SELECTS

ABLATIONS = ("att-memory", "ee-fusion", "ee-memory", "wsd", "layer-ee", "token-ee")
HEAD_INITS = ("pooler", "fresh")
RATIO_BASES = ("current", "original")         # N of Eq. 7: the current tokens, or the original length
TOKEN_SCORES = ("class", "all")               # Eq. 5's class attention, or Table 3's all-token attention
#: Fields fixed by a trained model's parameters: they cannot change at inference (nor on load, except
#: adding ``head_norm`` standardisers to a model trained without them).
PARAMETER_FIELDS = ("num_labels", "head", "head_norm", "final_classifier")


def _one_of(values: tuple[str, ...]) -> str:
    """``('a', 'b', 'c')`` -> ``"'a', 'b' or 'c'"`` for error messages."""
    quoted = [repr(v) for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def scale_layers(layers_of_12: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """Map 1-based layer numbers of a 12-layer BERT onto ``num_layers`` (round half up, deduplicated).

    ``scale_layers((4, 7, 10), 12) == (4, 7, 10)``; for 6 layers ``(2, 4, 5)``.
    """
    out = []
    for l in layers_of_12:
        s = max(1, min(num_layers, (2 * l * num_layers + 12) // 24))  # floor(l*L/12 + 1/2)
        if s not in out:
            out.append(s)
    return tuple(out)


#: Every string field of :class:`MPEEConfig` and its allowed values, each list written once (by the
#: module that implements the switch).
_CHOICES = {"r_ee_means": R_EE_MEANINGS, "ratio_base": RATIO_BASES, "token_score": TOKEN_SCORES,
            "fusion": FUSIONS, "fused_memory": FUSED_MEMORIES, "token_select": TOKEN_SELECTS,
            "memory_alignment": MEMORY_ALIGNMENTS, "head": HEAD_KINDS, "head_init": HEAD_INITS,
            "kd_direction": KD_DIRECTIONS, "kd_reduction": KD_REDUCTIONS,
            "ce_weighting": CE_WEIGHTINGS}


@dataclass(frozen=True)
class MPEEConfig:
    """Everything MPEE adds on top of the BERT backbone.

    Layer numbers are 1-based, as in the paper (layer l produces h^l).
    """

    num_labels: int = 2                     # C (J in Eq. 9): classes of the task

    # -- sequential token-wise early exit, Eqs. (5)-(8) ------------------------------------------
    token_exit: bool = True                 # "Token-EE" (Table 2): prune/fuse tokens at all?
    r_ee: float = 0.3                       # R_ee, Eq. 7: fraction of the N current tokens that exit
    r_ee_means: str = "exit"                # "exit": m = ceil(N(1-R_ee)) (paper); "keep": m = ceil(N R_ee) (authors)
    prune_layers: tuple[int, ...] | None = None  # layers where Eq. 7-8 act; None = authors' 4/7/10 scaled to depth
    ratio_base: str = "current"             # N in Eq. 7: "current" tokens (compounding) or "original" length
    beta: float = 0.5                       # β, Eq. 6: class-attention memory weight
    beta_warmup_layers: int = 0             # layers 1..k use β = 1 (authors: k = 4, raw attention up to layer 4)
    attention_memory: bool = True           # "Att-memory" (Table 2); False means β = 1 at every layer
    token_score: str = "class"              # Table 3: "class" attention (Eq. 5) or "all"-token attention
    fusion: str = "memory"                  # Eq. 8 α_i: "memory" (A_m score), "normalised", or "drop" (w/o EE-fusion)
    fused_memory: str = "sum"               # A_m entry of the fused token: "sum" of the fused scores, or "mean" (authors)
    token_select: str = "top"               # keep the m "top" scores (the method) or the "bottom" m (Fig. 5 control)
    pad_to: int | None = None               # N of Eq. 7 over padded slots: inputs count as padded to pad_to (authors: 128)
    memory_alignment: str = "gather"        # A_m after Eq. 8: "gather" (each token keeps its score) or "truncate" (authors)

    # -- layer-wise early exit, Eqs. (9)-(10) ---------------------------------------------------
    layer_exit: bool = True                 # "Layer-EE" (Table 2): may a sample leave before layer L?
    threshold: float = 0.3                  # F: exit when the entropy (nats) of softmax(C_zm^l) is < F
    lam: float = 0.9                        # λ, Eq. 10: classifier memory weight
    classifier_memory: bool = True          # "EE-memory" (Table 2); False means λ = 1
    head: str = "pooler"                    # Eq. 9: "pooler" W_c tanh(W_p h + b_p) + b_c, or literal "tanh"
    classifier_dropout: float = 0.1         # dropout before the exit classifier (training only)
    head_norm: bool = False                 # recipe (L10): standardise h_CLS per feature before each head
    head_init: str = "pooler"               # "pooler": copy the backbone pooler into pooler heads (authors); "fresh"
    final_classifier: bool = False          # authors: BERT pooler + Linear replaces exit L in the loss and predicts
                                            # samples that never exit; head L still drives layer L's exit test

    # -- training objective, Eqs. (11)-(14) ------------------------------------------------------
    use_kd: bool = True                     # "WSD" (Table 2): weighted self-distillation, Eqs. 12-13
    tau: float = 3.0                        # τ, Eq. 13 temperature (paper gives no value; authors use 3)
    kd_direction: str = "student_teacher"   # Eq. 13 as printed KL(student‖teacher); "teacher_student" (authors)
    kd_reduction: str = "batchmean"         # true KL per sample; "mean" = authors' element-wise mean
    detach_teacher_inputs: bool = True      # Eq. 12 inputs C_zm detached (authors)
    detach_teacher_in_kd: bool = False      # t not detached inside the KL (authors): trains W_η, V
    gamma: float | None = None              # None: L = L_CE + L_KD (Eq. 14); float: authors' γ-weighted form
    ce_weighting: str = "uniform"           # Eq. 11's sum: "uniform" (paper) or "depth" (w_l ∝ l; ours, L12)

    def __post_init__(self) -> None:
        def check(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"MPEEConfig: {msg}")

        check_field_types(self)          # JSON types, from the annotations (no string is coerced)
        for name, values in _CHOICES.items():
            value = getattr(self, name)
            check(value in values, f"{name} must be {_one_of(values)}, got {value!r}")
        check(isinstance(self.num_labels, int) and self.num_labels >= 2,
              f"num_labels must be an int >= 2, got {self.num_labels!r}")
        check(0.0 <= self.r_ee <= 1.0, f"r_ee (R_ee, Eq. 7) must be in [0, 1], got {self.r_ee!r}")
        if self.prune_layers is not None:
            object.__setattr__(self, "prune_layers", tuple(int(l) for l in self.prune_layers))
            check(all(l >= 1 for l in self.prune_layers) and len(set(self.prune_layers)) == len(self.prune_layers),
                  f"prune_layers must be distinct 1-based layer numbers, got {self.prune_layers!r}")
        check(0.0 < self.beta <= 1.0, f"beta (β, Eq. 6) must be in (0, 1], got {self.beta!r}")
        check(self.beta_warmup_layers >= 0, f"beta_warmup_layers must be >= 0, got {self.beta_warmup_layers!r}")
        check(self.pad_to is None or (isinstance(self.pad_to, int) and not isinstance(self.pad_to, bool)
                                      and self.pad_to >= 2), f"pad_to must be None or an int >= 2, got {self.pad_to!r}")
        check(self.pad_to is None or self.ratio_base == "current",
              f"pad_to counts N over the current padded slots; it cannot be combined with "
              f"ratio_base={self.ratio_base!r}")
        check(self.threshold >= 0.0, f"threshold (F) must be >= 0, got {self.threshold!r}")
        check(0.0 < self.lam <= 1.0, f"lam (λ, Eq. 10) must be in (0, 1], got {self.lam!r}")
        check(0.0 <= self.classifier_dropout < 1.0, f"classifier_dropout must be in [0, 1), got {self.classifier_dropout!r}")
        check(0.0 < self.tau < math.inf, f"tau (τ, Eq. 13) must be a finite number > 0, got {self.tau!r}")
        check(self.gamma is None or 0.0 <= self.gamma <= 1.0, f"gamma must be None or in [0, 1], got {self.gamma!r}")

    # ------------------------------------------------------------------ presets and ablations
    @classmethod
    def paper(cls, num_labels: int = 2, **overrides: Any) -> "MPEEConfig":
        """The paper's equations with our documented reading (same as ``MPEEConfig(...)``)."""
        return cls(num_labels=num_labels, **overrides)

    @classmethod
    def recipe(cls, num_labels: int = 2, **overrides: Any) -> "MPEEConfig":
        """The paper preset plus mpee_ref's exit-head recipe (docs L10): ``head_norm=True``.

        Train it with ``--head-lr-mult 20`` (exit heads and teacher at 20x the backbone's lr).
        The standardisation folds into Eq. (9)'s weights after training (``MPEEModel.fold_head_norms``).
        """
        return cls(num_labels=num_labels, **{"head_norm": True, **overrides})

    @classmethod
    def authors(cls, num_labels: int = 2, num_layers: int = 12, **overrides: Any) -> "MPEEConfig":
        """The authors' public code (JunKong5/MPEE @ e686cda), scaled to ``num_layers``."""
        layers = scale_layers((4, 7, 10), num_layers)
        base = dict(num_labels=num_labels, r_ee=0.7, r_ee_means="keep", prune_layers=layers,
                    beta=0.5, beta_warmup_layers=layers[0], fused_memory="mean", fusion="memory",
                    lam=0.9, head="pooler", tau=3.0, kd_direction="teacher_student",
                    kd_reduction="mean", detach_teacher_inputs=True, detach_teacher_in_kd=False,
                    gamma=0.1, pad_to=128, memory_alignment="truncate", final_classifier=True)
        base.update(overrides)
        return cls(**base)

    def without(self, component: str) -> "MPEEConfig":
        """The Table 2 ablation "w/o <component>" of this config.

        ``att-memory``: β = 1; ``ee-fusion``: pruned tokens dropped; ``ee-memory``: λ = 1;
        ``wsd``: no distillation, L = Σ_l CE_l (also drops the authors' γ weighting, which exists only
        to balance CE against KD; with it the loss would need a teacher); ``layer-ee``: no early exit
        of samples; ``token-ee``: no token pruning.
        """
        key = component.lower().removeprefix("w/o ").strip()
        changes = {"att-memory": dict(attention_memory=False), "ee-fusion": dict(fusion="drop"),
                   "ee-memory": dict(classifier_memory=False), "wsd": dict(use_kd=False, gamma=None),
                   "layer-ee": dict(layer_exit=False), "token-ee": dict(token_exit=False)}
        if key not in changes:
            raise ValueError(f"unknown ablation {component!r}; expected one of {ABLATIONS}")
        return replace(self, **changes[key])

    # ------------------------------------------------------------------ resolved values
    def prune_layer_set(self, num_layers: int) -> tuple[int, ...]:
        """Layers (1-based) where tokens exit; empty when Token-EE is off."""
        if not self.token_exit:
            return ()
        layers = self.prune_layers if self.prune_layers is not None else scale_layers((4, 7, 10), num_layers)
        bad = [l for l in layers if l > num_layers]
        if bad:
            raise ValueError(f"MPEEConfig.prune_layers {bad} exceed the model's {num_layers} layers")
        return tuple(sorted(layers))

    def beta_at(self, layer: int) -> float:
        """β used by Eq. 6 at 1-based ``layer``."""
        if not self.attention_memory or layer <= self.beta_warmup_layers:
            return 1.0
        return self.beta

    @property
    def effective_lam(self) -> float:
        """λ used by Eq. 10 (1 when EE-memory is ablated)."""
        return self.lam if self.classifier_memory else 1.0

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        d = asdict(self)
        if d["prune_layers"] is not None:
            d["prune_layers"] = list(d["prune_layers"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "MPEE config") -> "MPEEConfig":
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown MPEE config keys {unknown}")
        try:
            return cls(**d)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> "MPEEConfig":
        return cls.from_dict(read_json_object(path, "MPEE config file"), source=str(path))
