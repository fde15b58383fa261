"""Typed, frozen configurations.

``BertConfig`` keeps the field names of HF ``transformers.BertConfig`` so that a checkpoint's
``config.json`` maps onto it one to one. Paper hyper-parameters (MPEE) live in ``MPEEConfig``
(see ``mpee_ref/mpee/config.py``); each carries its paper symbol and equation number.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

def _matches(value: Any, annotation: str) -> bool | None:
    """Whether ``value`` has the type written in a (string) field annotation such as ``"float | None"``;
    ``None`` when the annotation holds a type this checker does not know (then nothing is checked)."""
    known = True
    for alt in (a.strip() for a in annotation.split("|")):
        if alt == "None":
            ok = value is None
        elif alt == "bool":
            ok = isinstance(value, bool)
        elif alt == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif alt == "float":                        # JSON writes 1.0 as 1: an int is a valid float
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif alt == "str":
            ok = isinstance(value, str)
        elif alt.startswith("tuple[int"):
            ok = isinstance(value, (tuple, list)) and all(isinstance(x, int) and not isinstance(x, bool)
                                                          for x in value)
        else:
            known, ok = False, False
        if ok:
            return True
    return False if known else None


def check_field_types(obj: Any) -> None:
    """Raise ``ValueError`` if a field of the dataclass ``obj`` does not have its annotated type.

    Strings are never coerced (``"0.5"`` is not a float, ``"false"`` not a bool, ``1`` not a bool), so
    a hand-edited JSON config fails here, naming the field, instead of later with a ``TypeError`` or,
    worse, silently (``bool("false")`` is True). The checks follow the annotations, so fields added
    later are covered without touching this function.
    """
    for f in fields(obj):
        value = getattr(obj, f.name)
        if _matches(value, str(f.type)) is False:
            raise ValueError(f"{type(obj).__name__}.{f.name} must be {f.type}, got {type(value).__name__} "
                             f"{value!r:.60}")


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; one-line errors naming the file (``what``: e.g. "config file")."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


#: Activations we implement; HF's ``"gelu"`` is the exact erf form, ``"gelu_new"`` the tanh form.
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new")


@dataclass(frozen=True)
class BertConfig:
    """BERT backbone sizes, with HF ``BertConfig`` field names.

    Paper notation: ``hidden_size`` = d (= D in the complexity analysis), ``num_attention_heads`` = H,
    ``hidden_size // num_attention_heads`` = d_h, ``intermediate_size`` = 4d (Eq. 4),
    ``num_hidden_layers`` = L.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"BertConfig.hidden_act must be one of {SUPPORTED_ACTIVATIONS}, "
                             f"got {self.hidden_act!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {value!r}")
        if not float(self.layer_norm_eps) > 0.0:
            raise ValueError(f"BertConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"BertConfig.pad_token_id must be in [0, vocab_size), got {self.pad_token_id!r}")

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> "BertConfig":
        """Build from an HF-style dict; unknown keys are ignored, a non-BERT model is refused."""
        model_type = d.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"{source}: model_type is {model_type!r}; mpee_ref only loads BERT ('bert')")
        pos = d.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(f"{source}: position_embedding_type {pos!r} is not supported (only 'absolute')")
        if d.get("is_decoder", False) or d.get("add_cross_attention", False):
            raise ValueError(f"{source}: decoder/cross-attention BERT variants are not supported")
        if not isinstance(d, Mapping):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        if kwargs.get("pad_token_id") is None:
            kwargs.pop("pad_token_id", None)
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        except TypeError as e:  # wrong types that dataclass init itself rejects
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_json_file(cls, path: str | Path) -> "BertConfig":
        return cls.from_dict(read_json_object(path, "config file"), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": "bert", **asdict(self)}
