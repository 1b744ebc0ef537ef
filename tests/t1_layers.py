"""The import rules of docs/design.md, checked on the code.

The import graph (read from the source with ``ast``, lazy imports inside functions included):
the product (``iscsifs``) never imports the test and demo harness (``iscsifs_testbed``).

iscsifs.core is sans-IO: importing any of its modules must not pull in I/O or concurrency
libraries.  Each module is imported in a fresh interpreter and ``sys.modules`` inspected; the
module list is globbed so that modules added later are covered too.  Two checks per module:

* no module of iscsifs does ``import trio`` / ``socket`` / ``pyfuse3`` / ``asyncio`` /
  ``threading`` itself (an ``__import__`` hook records who imports what);
* no forbidden module is in ``sys.modules`` afterwards, except those already loaded by importing
  the allowed third-party dependencies alone.  That baseline exists because the ``crc32c``
  package's ``__init__`` calls ``importlib.metadata``, which loads ``zipfile`` (-> threading)
  and ``email`` (-> socket) from the standard library.
"""

import ast
import json
import pathlib
import subprocess
import sys

import pytest

import iscsifs
import iscsifs.core

PACKAGE_DIR = pathlib.Path(iscsifs.__file__).parent

FORBIDDEN = ("trio", "socket", "_socket", "pyfuse3", "asyncio", "_asyncio", "threading")
ALLOWED_DEPENDENCIES = ("crc32c",)
CORE_DIR = pathlib.Path(iscsifs.core.__file__).parent
MODULES = ["iscsifs.core"] + sorted(
    f"iscsifs.core.{path.stem}" for path in CORE_DIR.glob("*.py") if path.stem != "__init__"
)

PROBE = """
import builtins, importlib, json, sys
FORBIDDEN = %r
direct = []
_real_import = builtins.__import__
def _hook(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name.split(".")[0] in FORBIDDEN:
        importer = (globals or {}).get("__name__") or "?"
        if importer == "iscsifs" or importer.startswith("iscsifs."):
            direct.append([importer, name])
    return _real_import(name, globals, locals, fromlist, level)
builtins.__import__ = _hook
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps({"modules": sorted(sys.modules), "direct": direct}))
""" % (FORBIDDEN,)


def _probe(*modules):
    result = subprocess.run([sys.executable, "-c", PROBE, *modules], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _forbidden(names):
    return {name for name in names if name.split(".")[0] in FORBIDDEN}


@pytest.fixture(scope="module")
def baseline():
    """Forbidden modules that the allowed dependencies load by themselves."""
    return _forbidden(_probe(*ALLOWED_DEPENDENCIES)["modules"])


def test_module_list_is_not_empty():
    assert "iscsifs.core.pdu" in MODULES
    assert "iscsifs.core.serial" in MODULES


def test_probe_catches_a_direct_import():
    found = _probe("iscsifs.core")
    assert found["direct"] == []
    # sanity check of the hook itself: a module of iscsifs importing threading is reported
    code = PROBE.replace("for name in sys.argv[1:]:",
                         "exec('import threading', {'__name__': 'iscsifs.core.x'})\n"
                         "for name in sys.argv[1:]:")
    result = subprocess.run([sys.executable, "-c", code, "json"], capture_output=True,
                            text=True, timeout=60)
    assert json.loads(result.stdout)["direct"] == [["iscsifs.core.x", "threading"]]


@pytest.mark.parametrize("module", MODULES)
def test_core_module_imports_no_io(module, baseline):
    found = _probe(module)
    assert not found["direct"], f"{module}: forbidden imports {found['direct']}"
    extra = sorted(_forbidden(found["modules"]) - baseline)
    assert not extra, f"importing {module} loads {extra}"


# ---------------------------------------------------------------------- the import graph
def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[:len(parent) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def product_graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def test_product_never_imports_the_testbed():
    offenders = {module: sorted(i for i in imported if i.split(".")[0] == "iscsifs_testbed")
                 for module, imported in product_graph().items()}
    assert not {m: i for m, i in offenders.items() if i}
