r"""Where an operating point's accuracy goes, exit layer by exit layer (``tools/exit_breakdown.py``).

At a point (F, R_ee) every sample leaves at some layer l. For the samples leaving at l, count the correct
predictions of three models on exactly those samples:

* MPEE at the point (the prediction it makes at layer l),
* the same model with exits off (token and layer exits off: every sample runs every layer, Eq. 10's
  memory of the last layer decides),
* optionally a reference model, typically the plain fine-tuned backbone (exits off as well).

Accuracy is additive over samples, so the gap to the reference splits exactly into
``(MPEE − exits off)``, what the early decision costs, and ``(exits off − reference)``, what the MPEE
training of the backbone costs, per exit layer. (F1 and correlation are not additive; the table counts
correct predictions whatever the task's metric.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class ExitRow:
    """One exit layer (``layer`` 1-based; 0 is the total row) and the correct counts on its samples."""

    layer: int
    count: int
    correct: int                  # MPEE at the operating point
    correct_exits_off: int        # the same model, every layer, no token exit
    correct_reference: int | None  # the reference model (None: not given)


def exit_breakdown(exit_layers: Sequence[int], predictions: Sequence[int], labels: Sequence[int],
                   exits_off: Sequence[int], num_layers: int,
                   reference: Sequence[int] | None = None) -> list[ExitRow]:
    """Per exit layer 1..``num_layers`` (every layer, empty ones included) and a total row (``layer`` 0,
    last): the number of samples that left there and the correct predictions among them of MPEE
    (``predictions``), of the same model with exits off (``exits_off``) and of ``reference``.

    All sequences are per sample, in one order; ``exit_layers`` in 1..``num_layers``."""
    n = len(labels)
    named = {"exit_layers": exit_layers, "predictions": predictions, "exits_off": exits_off}
    if reference is not None:
        named["reference"] = reference
    for name, seq in named.items():
        if len(seq) != n:
            raise ValueError(f"{name}: {len(seq)} entries for {n} labels")
    bad = [l for l in exit_layers if not 1 <= l <= num_layers]
    if bad:
        raise ValueError(f"exit_layers: {bad[0]!r} is outside 1..{num_layers}")
    rows = []
    for layer in range(1, num_layers + 1):
        idx = [i for i in range(n) if exit_layers[i] == layer]
        rows.append(ExitRow(layer, len(idx), sum(predictions[i] == labels[i] for i in idx),
                            sum(exits_off[i] == labels[i] for i in idx),
                            None if reference is None else sum(reference[i] == labels[i] for i in idx)))
    ref_total = None if reference is None else sum(r.correct_reference for r in rows)
    rows.append(ExitRow(0, n, sum(r.correct for r in rows), sum(r.correct_exits_off for r in rows), ref_total))
    return rows


def breakdown_markdown(rows: Sequence[ExitRow], reference_name: str = "reference") -> str:
    """The rows as a Markdown table; the last two columns are the gap's two parts, in samples."""
    has_ref = rows[-1].correct_reference is not None
    head = ["exit layer", "samples", "MPEE correct", "exits off correct"]
    head += [f"{reference_name} correct", "lost to the exit (off − MPEE)", f"lost to training ({reference_name} − off)"] \
        if has_ref else ["lost to the exit (off − MPEE)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r.layer) if r.layer else "all", str(r.count), str(r.correct), str(r.correct_exits_off)]
        if has_ref:
            cells += [str(r.correct_reference), f"{r.correct_exits_off - r.correct:+d}",
                      f"{r.correct_reference - r.correct_exits_off:+d}"]
        else:
            cells.append(f"{r.correct_exits_off - r.correct:+d}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
