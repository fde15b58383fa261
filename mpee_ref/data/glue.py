r"""Readers for the GLUE tasks the paper evaluates on (§4.1): SST-2, MRPC, QQP, QNLI, MNLI, RTE; also
CoLA, STS-B and WNLI.

The files are the standard GLUE layout written by the GLUE download script::

    <glue root>/SST-2/{train,dev}.tsv   header ``sentence\tlabel``; sentences end in a space
    <glue root>/MRPC/{train,dev}.tsv    header ``\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String`` (UTF-8 BOM)
    <glue root>/QQP/{train,dev}.tsv     header ``id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate``
    <glue root>/QNLI/{train,dev}.tsv    header ``index\tquestion\tsentence\tlabel``
    <glue root>/MNLI/train.tsv, dev_matched.tsv, dev_mismatched.tsv
                                        12 (train) / 16 (dev) columns; ``sentence1``/``sentence2`` are
                                        columns 8/9 (0-based), ``gold_label`` is the last
    <glue root>/RTE/, WNLI/             header ``index\tsentence1\tsentence2\tlabel``
    <glue root>/CoLA/{train,dev}.tsv    NO header; 4 columns ``source, label, original label, sentence``
    <glue root>/STS-B/{train,dev}.tsv   10 columns; ``sentence1``, ``sentence2``, ``score`` (float 0..5)

Decisions (each one is a choice the paper does not make; the GLUE conventions are followed):

* **Quoting is disabled**: a line is ``line.split('\t')``; QNLI, MRPC and SST-2 have fields that begin
  with ``"``, which a csv reader in its default mode would swallow.
* **Lines are split on ``\n`` only** (a trailing ``\r`` is dropped), never with ``str.splitlines``, which
  would also split on ``\x0b``, ``\x1c``, ``\u2028``... inside a sentence. The file is decoded as
  ``utf-8-sig``, which drops MRPC's BOM. A missing final newline (CoLA dev) is fine.
* **Columns are found by header name** in every file that has a header (``sentence1``, ``gold_label``,
  ``#1 String``...), so MNLI's 12-column train and 16-column dev files need no special case and a wrong
  file is refused at its header. The one header-less task, CoLA, uses fixed positions (3 = text,
  1 = label). Every row must have as many columns as the header (CoLA: 4).
* **Text is stripped** of surrounding whitespace (GLUE SST-2 ends every sentence in a space; a BERT
  tokenizer ignores it anyway). After stripping, an empty text is a malformed row.
* **Label maps** (``TaskSpec.label_names[i]`` is the raw label string of class ``i``): SST-2, MRPC, QQP,
  CoLA, WNLI ``("0", "1")``; QNLI, RTE ``("entailment", "not_entailment")``; MNLI
  ``("contradiction", "entailment", "neutral")`` -- the order of HF ``transformers``' ``MnliProcessor``
  and of HF ``datasets`` ``glue/mnli``. STS-B keeps its float score (``num_labels == 1``,
  ``task_type == "regression"``).
* **Splits**: ``"train"`` and ``"dev"``; MNLI also ``"dev_matched"``/``"dev_mismatched"``. ``"mnli"``'s
  ``"dev"`` is ``dev_matched.tsv`` and ``"mnli-mm"``'s ``"dev"`` is ``dev_mismatched.tsv`` (the paper's
  table has MNLI-m and MNLI-mm columns). GLUE ``test.tsv`` files are unlabelled and are not read.
* **Malformed rows** (wrong column count, unknown label, empty text, unparsable score) raise
  ``ValueError`` naming the file and the 1-based line number. The real GLUE QQP train file is known to
  hold a few broken rows (HF's ``QqpProcessor`` silently drops them); ``skip_malformed=True`` skips rows
  with a wrong column count or an empty text instead, counts them and reports them (a ``UserWarning``
  from :func:`read_glue`, a :class:`ReadReport` from :func:`read_glue_with_report`). An unknown label is
  never skipped: it means the wrong task or the wrong file.
* ``Example.guid`` is ``"<task>:<split>:<line>"`` with the 1-based line number in the file, so an example
  can be found in its file.

``data_dir`` resolution (first match wins), see :func:`resolve_split_path`:

1. ``data_dir/<TaskSpec.folder>/<file>`` when ``data_dir/<folder>`` is a directory (``data_dir`` is the
   GLUE root);
2. ``data_dir/<file>`` (``data_dir`` is the task folder itself, or any folder holding ``train.tsv``/
   ``dev.tsv`` directly, e.g. a folder holding only an SST-2 sentence-level split) -- unless
   ``data_dir``'s name is the GLUE folder of a *different* task (``.../RTE`` asked for SST-2), which is
   refused as the wrong folder.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Metric = Literal["accuracy", "f1_accuracy", "mcc", "pearson_spearman"]
TaskType = Literal["classification", "regression"]
_METRICS = ("accuracy", "f1_accuracy", "mcc", "pearson_spearman")


@dataclass(frozen=True)
class Example:
    """One labelled GLUE example. ``text_b`` is None for single-sentence tasks (SST-2, CoLA)."""

    text_a: str
    text_b: str | None
    label: int | float
    guid: str


@dataclass(frozen=True)
class TaskSpec:
    """How to read and score one GLUE task.

    ``label_names[i]`` is the raw label string that maps to class ``i`` (empty for regression).
    ``text_a_col``/``text_b_col``/``label_col`` are header names, or 0-based positions for a header-less
    file (``has_header=False``, then ``n_columns`` is the required column count).
    """

    name: str
    num_labels: int
    metric: Metric
    splits: dict[str, str] = field(hash=False)
    label_names: tuple[str, ...]
    folder: str = ""
    text_a_col: str | int = "sentence"
    text_b_col: str | int | None = None
    label_col: str | int = "label"
    has_header: bool = True
    n_columns: int | None = None
    task_type: TaskType = "classification"
    aliases: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.metric not in _METRICS:
            raise ValueError(f"TaskSpec.metric must be one of {_METRICS}, got {self.metric!r}")
        if self.task_type == "classification" and len(self.label_names) != self.num_labels:
            raise ValueError(f"TaskSpec {self.name}: {len(self.label_names)} label_names for "
                             f"num_labels={self.num_labels}")
        if self.task_type == "regression" and (self.num_labels != 1 or self.label_names):
            raise ValueError(f"TaskSpec {self.name}: a regression task has num_labels=1 and no label_names")
        cols = (self.text_a_col, self.text_b_col, self.label_col)
        if not self.has_header and (self.n_columns is None
                                    or not all(c is None or isinstance(c, int) for c in cols)):
            raise ValueError(f"TaskSpec {self.name}: a header-less file needs integer columns and n_columns")

    @property
    def label_to_id(self) -> dict[str, int]:
        """Raw label string -> class id."""
        return {name: i for i, name in enumerate(self.label_names)}


_BIN = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_MNLI3 = ("contradiction", "entailment", "neutral")
_MNLI_SPLITS = {"train": "train.tsv", "dev_matched": "dev_matched.tsv",
                "dev_mismatched": "dev_mismatched.tsv"}

TASKS: dict[str, TaskSpec] = {s.name: s for s in (
    TaskSpec("sst-2", 2, "accuracy", {"train": "train.tsv", "dev": "dev.tsv"}, _BIN, folder="SST-2",
             text_a_col="sentence", label_col="label", aliases=("sst2", "sst")),
    TaskSpec("mrpc", 2, "f1_accuracy", {"train": "train.tsv", "dev": "dev.tsv"}, _BIN, folder="MRPC",
             text_a_col="#1 String", text_b_col="#2 String", label_col="Quality"),
    TaskSpec("qqp", 2, "accuracy", {"train": "train.tsv", "dev": "dev.tsv"}, _BIN, folder="QQP",
             text_a_col="question1", text_b_col="question2", label_col="is_duplicate"),
    TaskSpec("qnli", 2, "accuracy", {"train": "train.tsv", "dev": "dev.tsv"}, _NLI2, folder="QNLI",
             text_a_col="question", text_b_col="sentence", label_col="label"),
    TaskSpec("mnli", 3, "accuracy", {**_MNLI_SPLITS, "dev": "dev_matched.tsv"}, _MNLI3, folder="MNLI",
             text_a_col="sentence1", text_b_col="sentence2", label_col="gold_label",
             aliases=("mnli-m", "mnli-matched")),
    TaskSpec("mnli-mm", 3, "accuracy", {**_MNLI_SPLITS, "dev": "dev_mismatched.tsv"}, _MNLI3,
             folder="MNLI", text_a_col="sentence1", text_b_col="sentence2", label_col="gold_label",
             aliases=("mnli-mismatched",)),
    TaskSpec("rte", 2, "accuracy", {"train": "train.tsv", "dev": "dev.tsv"}, _NLI2, folder="RTE",
             text_a_col="sentence1", text_b_col="sentence2", label_col="label"),
    TaskSpec("cola", 2, "mcc", {"train": "train.tsv", "dev": "dev.tsv"}, _BIN, folder="CoLA",
             text_a_col=3, text_b_col=None, label_col=1, has_header=False, n_columns=4),
    TaskSpec("sts-b", 1, "pearson_spearman", {"train": "train.tsv", "dev": "dev.tsv"}, (), folder="STS-B",
             text_a_col="sentence1", text_b_col="sentence2", label_col="score", task_type="regression",
             aliases=("stsb", "sts")),
    TaskSpec("wnli", 2, "accuracy", {"train": "train.tsv", "dev": "dev.tsv"}, _BIN, folder="WNLI",
             text_a_col="sentence1", text_b_col="sentence2", label_col="label"),
)}

#: The six tasks of the paper's Table 1, in its order of §4.1 (MNLI-mm is a column of the same table).
PAPER_TASKS = ("sst-2", "qqp", "mrpc", "qnli", "mnli", "mnli-mm", "rte")

_ALIASES: dict[str, str] = {a: s.name for s in TASKS.values() for a in s.aliases}


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Look a task up by name, case-insensitively; ``_`` counts as ``-``; aliases: ``sst2``, ``mnli-m``,
    ``mnli-mm``, ``stsb``... Unknown names raise ``ValueError`` listing the known ones."""
    if isinstance(name, TaskSpec):
        return name
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise ValueError(f"task: unknown GLUE task {name!r}; known tasks: {sorted(TASKS)} "
                         f"(aliases: {sorted(_ALIASES)})")
    return TASKS[key]


@dataclass(frozen=True)
class ReadReport:
    """What :func:`read_glue_with_report` read: the file, the examples kept, the rows skipped."""

    path: Path
    n_examples: int
    skipped: tuple[tuple[int, str], ...] = ()  # (1-based line number, reason)


# ----------------------------------------------------------------------------- paths
def resolve_split_path(task: str | TaskSpec, data_dir: str | Path, split: str = "dev") -> Path:
    """The file holding ``split`` of ``task`` under ``data_dir`` (resolution order in the module doc).

    Raises ``ValueError`` for an unknown split, a ``data_dir`` that is missing, not a folder or another
    task's GLUE folder, or a split file found in none of the places looked in (they are listed).
    """
    spec = get_task(task)
    if split not in spec.splits:
        raise ValueError(f"split: unknown split {split!r} for task {spec.name}; "
                         f"known splits: {sorted(spec.splits)}")
    fname = spec.splits[split]
    root = Path(data_dir)
    if not root.exists():
        raise ValueError(f"data_dir: {root} does not exist (expected the GLUE root holding "
                         f"{spec.folder}/, or the {spec.folder} folder itself)")
    if not root.is_dir():
        raise ValueError(f"data_dir: {root} is a file, expected a folder (the GLUE root or {spec.folder}/)")
    task_dir = root / spec.folder
    if task_dir.is_dir():
        candidates = [task_dir / fname]
    else:
        other = {s.folder for s in TASKS.values()} - {spec.folder}
        if root.name in other:
            raise ValueError(f"data_dir: {root} is the GLUE folder of another task ({root.name}), "
                             f"not of {spec.name} (expected {spec.folder}/ or the GLUE root)")
        candidates = [task_dir / fname, root / fname]
    for path in candidates:
        if path.is_file():
            return path
    raise ValueError(f"data_dir: no {split!r} file for task {spec.name}; looked for "
                     + ", ".join(str(p) for p in candidates))


# ----------------------------------------------------------------------------- reading
def _lines(path: Path) -> list[str]:
    # bytes, then decode: a text-mode read would turn a lone "\r" inside a row into a line break
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line, it does not start a new one
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _column_index(spec: TaskSpec, header: list[str] | None, col: str | int, path: Path) -> int:
    if header is None:
        return int(col)
    if isinstance(col, int):
        return col
    if col not in header:
        raise ValueError(f"{path}: line 1: header has no column {col!r} for task {spec.name} "
                         f"(found {header}); is this the right file/folder?")
    return header.index(col)


def read_glue_file(task: str | TaskSpec, path: str | Path, split: str = "dev", *,
                   skip_malformed: bool = False) -> tuple[list[Example], ReadReport]:
    """Read one GLUE TSV file of ``task`` (layout from its :class:`TaskSpec`).

    Returns the examples and a :class:`ReadReport`. Raises ``ValueError`` naming ``path`` and the
    1-based line number for a bad header, a wrong column count, an unknown label, an empty text or an
    unparsable score (with ``skip_malformed=True`` the wrong column counts and empty texts are skipped
    and listed in the report instead).
    """
    spec = get_task(task)
    path = Path(path)
    lines = _lines(path)
    if not lines:
        raise ValueError(f"{path}: the file is empty (task {spec.name})")
    header = lines[0].split("\t") if spec.has_header else None
    first = 2 if spec.has_header else 1  # 1-based number of the first data line
    n_cols = len(header) if header is not None else spec.n_columns
    i_a = _column_index(spec, header, spec.text_a_col, path)
    i_b = None if spec.text_b_col is None else _column_index(spec, header, spec.text_b_col, path)
    i_y = _column_index(spec, header, spec.label_col, path)
    if spec.has_header and len(lines) < 2:
        raise ValueError(f"{path}: the file has a header but no rows (task {spec.name})")
    label_to_id = spec.label_to_id
    examples: list[Example] = []
    skipped: list[tuple[int, str]] = []
    for lineno, line in enumerate(lines[first - 1:], start=first):
        cols = line.split("\t")
        where = f"{path}: line {lineno}"
        if len(cols) != n_cols:
            reason = f"{len(cols)} tab-separated columns, expected {n_cols}"
            if skip_malformed:
                skipped.append((lineno, reason))
                continue
            raise ValueError(f"{where}: {reason} (task {spec.name})")
        text_a = cols[i_a].strip()
        text_b = None if i_b is None else cols[i_b].strip()
        if not text_a or text_b == "":
            reason = "empty text_a" if not text_a else "empty text_b"
            if skip_malformed:
                skipped.append((lineno, reason))
                continue
            raise ValueError(f"{where}: {reason} (task {spec.name})")
        raw = cols[i_y].strip()
        label: int | float
        if spec.task_type == "regression":
            try:
                label = float(raw)
            except ValueError:
                raise ValueError(f"{where}: score {raw!r} is not a number (task {spec.name})") from None
            if label != label or label in (float("inf"), float("-inf")):
                raise ValueError(f"{where}: score {raw!r} is not finite (task {spec.name})")
        else:
            if raw not in label_to_id:
                raise ValueError(f"{where}: unknown label {raw!r} for task {spec.name}; "
                                 f"expected one of {list(spec.label_names)}")
            label = label_to_id[raw]
        examples.append(Example(text_a, text_b, label, f"{spec.name}:{split}:{lineno}"))
    return examples, ReadReport(path, len(examples), tuple(skipped))


def read_glue_with_report(task: str | TaskSpec, data_dir: str | Path, split: str = "dev", *,
                          skip_malformed: bool = False) -> tuple[list[Example], ReadReport]:
    """:func:`read_glue`, also returning the :class:`ReadReport` (file read, rows skipped)."""
    spec = get_task(task)
    return read_glue_file(spec, resolve_split_path(spec, data_dir, split), split,
                          skip_malformed=skip_malformed)


def read_glue(task: str, data_dir: str | Path, split: str = "dev", *,
              skip_malformed: bool = False) -> list[Example]:
    """Read ``split`` (``"train"``, ``"dev"``; MNLI also ``"dev_matched"``/``"dev_mismatched"``) of a GLUE
    ``task`` from ``data_dir`` (the GLUE root, the task folder, or a folder with ``train.tsv``/``dev.tsv``).

    With ``skip_malformed=True``, rows with a wrong column count or an empty text are skipped and a
    ``UserWarning`` states how many and on which lines; otherwise they raise ``ValueError``.
    """
    examples, report = read_glue_with_report(task, data_dir, split, skip_malformed=skip_malformed)
    if report.skipped:
        shown = ", ".join(f"line {n} ({why})" for n, why in report.skipped[:5])
        more = "" if len(report.skipped) <= 5 else f", ... ({len(report.skipped) - 5} more)"
        warnings.warn(f"{report.path}: skipped {len(report.skipped)} malformed rows, kept "
                      f"{report.n_examples}: {shown}{more}", UserWarning, stacklevel=2)
    return examples
