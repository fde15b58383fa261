"""Every ``Deviation`` line of the package cites interpretation IDs (``Deviation (E8-1, F6): ...``), and
every cited ID is an entry of docs/INTERPRETATION.md, docs/interpretation/*.md or docs/BASELINES.md."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ID = r"(?:[A-Z]\d+(?:-\d+)?)"


def documented_ids() -> set[str]:
    """IDs defined by a heading: ``## M8. ...``, ``## E7-2. ...``, ``### 2. (B2) DeeBERT ...``."""
    docs = [REPO / "docs" / "INTERPRETATION.md", REPO / "docs" / "BASELINES.md",
            *sorted((REPO / "docs" / "interpretation").glob("*.md"))]
    ids = set()
    for path in docs:
        for line in path.read_text(encoding="utf-8").splitlines():
            m = re.match(rf"#+ (?:\d+\. \(({ID})\)|({ID})\.) ", line)
            if m:
                ids.add(m.group(1) or m.group(2))
    return ids


def test_every_deviation_cites_a_documented_id():
    ids = documented_ids()
    assert {"M8", "L10", "E8-2", "F1", "E1-1", "B2"} <= ids          # the parser sees each doc's style
    seen = 0
    for path in sorted((REPO / "mpee_ref").rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "Deviation" not in line or "``Deviation (ID):``" in line:
                continue
            m = re.search(rf"Deviation \(({ID}(?:, {ID})*)[,)]", line)
            assert m, f"{path.relative_to(REPO)}:{n}: a Deviation line without interpretation ID: {line.strip()}"
            missing = [i for i in m.group(1).split(", ") if i not in ids]
            assert not missing, f"{path.relative_to(REPO)}:{n}: cites {missing}, not defined in docs/"
            seen += 1
    assert seen >= 25                                               # the scan found the docstrings
