"""The docs name only files and modules that exist: README.md, docs/*.md, tests/README.md, the
man pages, and the docstring of every module (the product, the testbed, the tests, bench/)."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "tests" / "README.md", *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "man").glob("*.8"))]
FILES = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
         if ".git" not in p.parts and ".venv" not in p.parts}
NAMES = {Path(f).name for f in FILES}

PATH_RE = re.compile(r"(?<![\w./-])((?:[\w.-]+/)+[\w.-]+\.(?:py|md|sh))\b")
FILE_RE = re.compile(r"(?<![\w./-])([\w-]+\.py)\b")
# "h11's ``_state.py``": a file of another project, named as a model
OUTSIDE_RE = re.compile(r"\b(?:h11|s3ql|trio|libiscsi|open-iscsi|pyfuse3|libfuse|tgt)'s\W*\Z")
# a dotted name followed by "/" is a JSON schema id (iscsifs.info/1), not a module
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


def _missing(text: str, doc: Path) -> list[str]:
    """What ``text`` (found in ``doc``) names that does not exist."""
    missing = []
    for path in PATH_RE.findall(text):
        if path.startswith("../"):                  # beside the repository, not in it
            continue
        candidates = {path, f"iscsifs/{path}", (doc.parent / path).resolve().relative_to(ROOT)
                      .as_posix() if (doc.parent / path).resolve().is_relative_to(ROOT) else path}
        if not candidates & FILES:
            missing.append(path)
    missing += [m.group(1) for m in FILE_RE.finditer(text) if m.group(1) not in NAMES
                and not OUTSIDE_RE.search(text[max(0, m.start() - 40):m.start()])]
    missing += [m for m in MODULE_RE.findall(text) if not _resolves(m.rstrip("."))]
    return sorted(set(missing))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_name_what_exists(doc):
    missing = _missing(doc.read_text(), doc)
    assert not missing, f"{doc.name} names what does not exist: {missing}"


MODULES = sorted(p for folder in ("iscsifs", "iscsifs_testbed", "tests", "bench")
                 for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_module_docstrings_name_what_exists(module):
    docstring = ast.get_docstring(ast.parse(module.read_text(), str(module))) or ""
    missing = _missing(docstring, module)
    assert not missing, f"{module.relative_to(ROOT)}'s docstring names what does not exist: " \
                        f"{missing}"


def test_a_stale_name_is_caught():
    assert _missing("see t5_discard.py and iscsifs.cli.common", ROOT / "tests" / "x.py") == [
        "iscsifs.cli.common", "t5_discard.py"]
    assert _missing("like h11's ``_state.py``", ROOT / "tests" / "x.py") == []
