"""The product's wheel holds the product only: ``iscsifs`` with its ``iscsifs`` and
``mount.iscsifs`` commands and man pages, never the test and demo harness
(``iscsifs_testbed``) or a demo command. The tests, the benchmark and the demo still find the
harness in the checkout.

The wheel is built for real (``pip wheel --no-build-isolation``, offline: setuptools and wheel
come with ``.[test]``) from a copy of the files a source tree has."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import iscsifs_testbed

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ["setup.cfg", "pyproject.toml", "README.md", "mount.iscsifs", "man", "iscsifs",
          "iscsifs_testbed"]


def test_the_wheel_holds_the_product_and_no_testbed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps",
                             "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path)],
                            cwd=src, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = tmp_path.glob("iscsifs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if "testbed" in n or "demo" in n], names
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith((".dist-info", ".data"))} == {"iscsifs"}
    for module in ("iscsifs/cli/main.py", "iscsifs/mount/main.py", "iscsifs/core/names.py",
                   "iscsifs/sessionfile.py"):
        assert module in names
    data = [n for n in names if ".data/" in n]
    assert any(n.endswith("/scripts/mount.iscsifs") for n in data)
    assert any(n.endswith("/man8/mount.iscsifs.8") for n in data)
    meta = zipfile.ZipFile(wheel)
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = configparser.ConfigParser()
    scripts.read_string(meta.read(entry_points).decode())
    assert dict(scripts["console_scripts"]) == {"iscsifs": "iscsifs.cli.main:main"}


def test_tests_bench_and_demo_take_the_testbed_from_the_checkout():
    assert Path(iscsifs_testbed.__file__).resolve().parent == ROOT / "iscsifs_testbed"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # the benchmarks, run as `python bench/bench.py` (sys.path[0] is bench/)
    r = subprocess.run([sys.executable, "-c", "import _target; print(_target.Tgtd.__module__)"],
                       cwd=ROOT / "bench", env=env, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout.strip()) == (0, "iscsifs_testbed.tgtd"), r.stderr
    # the demo: scripts/demo runs it from the checkout, not as an installed command
    assert "-m iscsifs_testbed.demo" in (ROOT / "scripts" / "demo").read_text()
    r = subprocess.run([sys.executable, "-m", "iscsifs_testbed.demo", "--help"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "throwaway local tgtd" in r.stdout, r.stderr
    assert not (Path(sys.executable).parent / "iscsifs-demo").exists()
