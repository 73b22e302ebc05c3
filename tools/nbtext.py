"""Convert nbdev notebooks to a plain-text cell format and back, so they can be edited as text.

The text format is one marker line per cell, followed by the cell's source:

    #%% md <id>
    # Title
    #%% code <id>
    #| export
    def f(): ...

The id is optional: a cell without one gets a new random id when it is written
back. Keeping ids stable keeps the `# %% ../nbs/...ipynb #<id>` lines that
nbdev-export writes into the package stable too. Outputs are not kept: the
notebooks in this repository are stored clean (nbdev-clean).

Usage:
    python tools/nbtext.py to-text nbs/models.ipynb > /tmp/models.txt
    python tools/nbtext.py to-nb /tmp/models.txt nbs/models.ipynb
"""
from __future__ import annotations

import json
import re
import secrets
import sys
from pathlib import Path

MARKER = re.compile(r"^#%% (md|code)(?: ([0-9A-Za-z_-]+))?\s*$")
KINDS = {"md": "markdown", "code": "code"}


def notebook_to_text(path: Path) -> str:
    "Render the cells of the notebook at `path` in the text format."
    nb = json.loads(path.read_text())
    parts = []
    for cell in nb["cells"]:
        kind = "md" if cell["cell_type"] == "markdown" else "code"
        source = "".join(cell["source"])
        parts.append(f"#%% {kind} {cell.get('id', '')}".rstrip() + "\n" + source)
    return "\n".join(parts) + "\n"


def _source_lines(text: str) -> list:
    "Split cell text into the list-of-lines form that notebooks store."
    lines = text.splitlines(keepends=True)
    if lines: lines[-1] = lines[-1].rstrip("\n")
    return lines


def text_to_notebook(text: str) -> dict:
    "Parse the text format into a clean notebook dict."
    cells, current = [], None
    for line in text.splitlines(keepends=True):
        match = MARKER.match(line.rstrip("\n"))
        if match:
            current = {"kind": match.group(1), "id": match.group(2) or secrets.token_hex(4), "lines": []}
            cells.append(current)
        elif current is None:
            if line.strip(): raise ValueError(f"Text before the first '#%%' marker: {line!r}")
        else:
            current["lines"].append(line)

    out = []
    for cell in cells:
        body = "".join(cell["lines"]).strip("\n")
        entry = {"cell_type": KINDS[cell["kind"]], "id": cell["id"], "metadata": {}, "source": _source_lines(body)}
        if cell["kind"] == "code": entry = {"cell_type": "code", "execution_count": None, "id": cell["id"],
                                            "metadata": {}, "outputs": [], "source": _source_lines(body)}
        out.append(entry)
    return {"cells": out,
            "metadata": {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


def main(argv: list) -> int:
    if len(argv) == 2 and argv[0] == "to-text":
        sys.stdout.write(notebook_to_text(Path(argv[1])))
        return 0
    if len(argv) == 3 and argv[0] == "to-nb":
        nb = text_to_notebook(Path(argv[1]).read_text())
        ids = [c["id"] for c in nb["cells"]]
        if len(ids) != len(set(ids)): raise SystemExit(f"Duplicate cell ids in {argv[1]}")
        target = Path(argv[2])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
