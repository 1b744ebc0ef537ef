"""The one place the benchmarks (bench.py, breakdown.py, soak.py) import the private-tgtd
harness from. iscsifs_testbed is not installed (it is not part of the product's wheel): it is
imported from the checkout this file is in."""
import sys
from pathlib import Path

_REPO = str(Path(__file__).resolve().parent.parent)
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from iscsifs_testbed.tgtd import (Tgtd, TgtError, free_tcp_port,  # noqa: E402,F401
                                  missing_requirements)

__all__ = ["Tgtd", "TgtError", "free_tcp_port", "missing_requirements"]
