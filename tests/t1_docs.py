"""The docs name only files and modules that exist (README.md, docs/*.md, tests/README.md)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "tests" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FILES = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
         if ".git" not in p.parts and ".venv" not in p.parts}
NAMES = {Path(f).name for f in FILES}

PATH_RE = re.compile(r"(?<![\w./-])((?:[\w.-]+/)+[\w.-]+\.(?:py|md|sh))\b")
FILE_RE = re.compile(r"(?<![\w./-])([\w-]+\.py)\b")
# a dotted name followed by "/" is not a module: a JSON schema name (iscsifs.session/1)
MODULE_RE = re.compile(r"(?<![\w.])(iscsifs(?:_testbed)?(?:\.[A-Za-z_]\w*)+)(?![\w/])")


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_name_what_exists(doc):
    text = doc.read_text()
    missing = []
    for path in PATH_RE.findall(text):
        if path.startswith("../"):                  # beside the repository, not in it
            continue
        candidates = {path, f"iscsifs/{path}", (doc.parent / path).resolve().relative_to(ROOT)
                      .as_posix() if (doc.parent / path).resolve().is_relative_to(ROOT) else path}
        if not candidates & FILES:
            missing.append(path)
    missing += [name for name in FILE_RE.findall(text) if name not in NAMES]
    missing += [m for m in MODULE_RE.findall(text) if not _resolves(m.rstrip("."))]
    assert not missing, f"{doc.name} names what does not exist: {sorted(set(missing))}"
