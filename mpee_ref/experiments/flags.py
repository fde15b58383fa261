"""Command-line flags derived from the dataclasses they fill: one source of truth per argument.

A field declared with :func:`arg` carries its help text (and, where needed, its flag name, choices and a
parser for the raw strings) in ``dataclasses.field`` metadata. :func:`add_flags` turns every field of such
a dataclass into an ``argparse`` flag, and :func:`from_flags` builds the dataclass back from the parsed
``Namespace``. The flag spelling is the field name with ``-`` for ``_``; the kind of flag follows the
field's annotation:

==========================  =====================================================================
annotation / default        flag
==========================  =====================================================================
no default                  required (``--task sst-2``)
``int``, ``float``, ``str`` one value, converted by the type (``| None`` allowed, default kept)
``bool``, default False     ``--name`` sets True
``bool``, default True      ``--no-name`` sets False
``tuple[str, ...]``         repeatable ``--name X`` (collected into a tuple)
``dict`` + ``parse=``       repeatable ``--name X``; ``parse(list_of_strings)`` builds the dict
==========================  =====================================================================
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch

T = TypeVar("T")
_TYPES: dict[str, type] = {"int": int, "float": float, "str": str}


def arg(default: Any = dataclasses.MISSING, help: str | None = None, *, flag: str | None = None,
        choices: Sequence[Any] | None = None, metavar: str | None = None,
        parse: Callable[[list[str]], Any] | None = None) -> Any:
    """A dataclass field with its command-line description (``default`` a ``list``/``dict`` type: a factory)."""
    meta = {"help": help, "flag": flag, "choices": choices, "metavar": metavar, "parse": parse}
    if default in (dict, list):
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _default(f: dataclasses.Field, defaults: Mapping[str, Any]) -> Any:
    if f.name in defaults:
        return defaults[f.name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def add_flags(parser: argparse.ArgumentParser, cls: type, *, defaults: Mapping[str, Any] | None = None,
              skip: Sequence[str] = ()) -> None:
    """Add one flag per field of the dataclass ``cls`` (see the module doc); ``defaults`` replaces a field's
    default for this parser; ``skip`` leaves fields out (the command fills them itself)."""
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta = f.metadata
        default = _default(f, defaults)
        kind = str(f.type).replace(" ", "")
        name = meta.get("flag") or "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "help": meta.get("help")}
        if kind == "bool":
            name = f"--no-{name[2:]}" if default else name
            kw["action"] = "store_false" if default else "store_true"
            kw["default"] = default
        elif kind.startswith(("tuple", "dict", "list")):
            kw.update(action="append", default=[], metavar=meta.get("metavar"), choices=meta.get("choices"))
        else:
            kw.update(type=_TYPES[kind.removesuffix("|None")], choices=meta.get("choices"), metavar=meta.get("metavar"))
            if default is dataclasses.MISSING:
                kw["required"] = True
            else:
                kw["default"] = default
        parser.add_argument(name, **{k: v for k, v in kw.items() if v is not None or k == "default"})


def from_flags(cls: type[T], ns: argparse.Namespace, **fixed: Any) -> T:
    """The dataclass ``cls`` from a ``Namespace`` parsed with :func:`add_flags` (``fixed`` wins)."""
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in fixed or not hasattr(ns, f.name):
            continue
        value = getattr(ns, f.name)
        parse = f.metadata.get("parse")
        if parse is not None:
            value = parse(value)
        elif isinstance(value, list):
            value = tuple(value)
        kw[f.name] = value
    return cls(**kw, **fixed)


def command_parser(subparsers: Any, name: str, help: str, doc: str | None,
                   flags: type | None = None) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` prints its module docstring as written; ``flags``: a dataclass whose
    fields become its flags (:func:`add_flags`)."""
    parser = subparsers.add_parser(name, help=help, description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    if flags is not None:
        add_flags(parser, flags)
    return parser


def resolve_device(name: str) -> torch.device:
    """``--device`` as a ``torch.device`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``); a clear ``ValueError``
    if the string is not a device or the device is not available on this machine."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device: {name!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine (use --device cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: only cpu, cuda[:N] and mps are supported")
    return device
