"""The import rules of docs/design.md, checked on the code.

The import graph (read from the source with ``ast``, lazy imports inside functions included):
no module imports itself through others (no cycles), every import points down the layers of
``LAYERS`` and none is one of the imports ``NEVER`` names (the two entry points import neither
each other; the iscsifs command imports nothing of the filesystem), and the product
(``iscsifs``) never imports the test and demo harness (``iscsifs_testbed``).

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


# The layers of docs/design.md, from the bottom up: a module imports only its own layer and the
# layers below it.
LAYERS = [
    ("errors", ("iscsifs.errors",)),
    ("scsi", ("iscsifs.scsi",)),                  # SCSI, knows no iSCSI
    ("core", ("iscsifs.core",)),                  # sans-IO iSCSI
    ("config", ("iscsifs.config",)),              # open-iscsi's files
    ("sessionfile", ("iscsifs.sessionfile",)),    # session.json and its text, for fs and cli
    ("net", ("iscsifs.net",)),                    # trio: transport, sessions, discovery
    ("device", ("iscsifs.device",)),              # a LUN over a session
    ("multipath", ("iscsifs.multipath",)),        # a LUN over several paths (sessions)
    ("initiator", ("iscsifs.initiator", "iscsifs.nodeopts")),   # the facade
    ("fs", ("iscsifs.fs",)),                      # pyfuse3 (sees the facade as fs/backend.py)
    ("shared", ("iscsifs.logs", "iscsifs.exits", "iscsifs.mounttable")),  # what both commands use
    ("entry points", ("iscsifs.cli", "iscsifs.mount")),   # iscsifs, mount.iscsifs: side by side
]
# Imports the layers would allow but the design does not (importer, imported): the two entry
# points (one layer) stand side by side, neither importing the other; and the iscsifs command
# reads a mount's files (session.json through iscsifs.sessionfile), never the filesystem's code.
NEVER = [("iscsifs.cli", "iscsifs.mount"), ("iscsifs.mount", "iscsifs.cli"),
         ("iscsifs.cli", "iscsifs.fs")]


def layer_of(module: str) -> int | None:
    for rank, (_name, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def internal_graph() -> dict[str, set[str]]:
    """module -> the modules of iscsifs it imports."""
    graph = product_graph()
    return {m: {i for i in imported if i in graph and i != m} for m, imported in graph.items()}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports that point up the layers, and those ``NEVER`` names."""
    found = []
    for module, imported in sorted(graph.items()):
        here = layer_of(module)
        for target in sorted(imported):
            there = layer_of(target)
            if here is not None and there is not None and there > here:
                found.append(f"{module} -> {target}")
            elif any(_within(module, a) and _within(target, b) for a, b in NEVER):
                found.append(f"{module} -> {target}")
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_every_module_has_a_layer():
    assert not [m for m in product_graph() if m != "iscsifs" and layer_of(m) is None]


def test_imports_point_down_the_layers():
    assert not upward_imports(internal_graph())


def test_no_import_cycles():
    assert not import_cycles(internal_graph())


def test_the_checks_see_what_they_look_for():
    planted = {"iscsifs.cli.main": {"iscsifs.cli.nodes"}, "iscsifs.cli.nodes": {"iscsifs.cli.main"},
               "iscsifs.device": {"iscsifs.initiator"}, "iscsifs.initiator": set(),
               "iscsifs.mount.config": {"iscsifs.cli.discover"}, "iscsifs.cli.discover": set(),
               "iscsifs.cli.session": {"iscsifs.fs.render"}, "iscsifs.fs.render": set()}
    assert import_cycles(planted) == [["iscsifs.cli.main", "iscsifs.cli.nodes"]]
    assert upward_imports(planted) == ["iscsifs.cli.session -> iscsifs.fs.render",
                                       "iscsifs.device -> iscsifs.initiator",
                                       "iscsifs.mount.config -> iscsifs.cli.discover"]


def test_cli_and_mount_import_neither_each_other():
    """The two entry points stand side by side (s3ql's commands do): what both need is in
    iscsifs.logs, iscsifs.exits and iscsifs.mounttable, below them. The iscsifs command reads
    a mount's files, not the filesystem's code: it imports nothing of iscsifs.fs either."""
    graph = internal_graph()
    crossing = sorted(f"{m} -> {i}" for m, imported in graph.items() for i in imported
                      if any(_within(m, a) and _within(i, b) for a, b in NEVER))
    assert not crossing
    assert ("iscsifs.cli", "iscsifs.mount") in NEVER and ("iscsifs.mount", "iscsifs.cli") in NEVER
    assert any(_within(m, "iscsifs.cli") for m in graph)
    assert any(_within(m, "iscsifs.mount") for m in graph)


def test_the_layer_table_of_docs_design_md_is_the_code_s():
    """docs/design.md draws the layers top to bottom: every module or package it names exists,
    they come in the order of LAYERS (never a lower layer above a higher one), and every layer
    is in the picture."""
    import re
    design = PACKAGE_DIR.parent / "docs" / "design.md"
    table = design.read_text().split("## Layers", 1)[1].split("```")[1]
    named = re.findall(r"iscsifs/([\w/]*\w)(\.py|/)", table)
    modules = [("iscsifs/" + path).replace("/", ".") for path, _ in named]
    graph = product_graph()
    assert modules and all(m in graph for m in modules), modules
    ranks = [layer_of(m) for m in modules]
    assert None not in ranks
    assert ranks == sorted(ranks, reverse=True), list(zip(modules, ranks))
    assert set(ranks) == set(range(len(LAYERS)))


