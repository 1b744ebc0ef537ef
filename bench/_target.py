"""The one place the benchmarks (bench.py, breakdown.py, soak.py) import the private-tgtd
harness from."""
from iscsifs_testbed.tgtd import (Tgtd, TgtError, free_tcp_port,  # noqa: F401
                                  missing_requirements)

__all__ = ["Tgtd", "TgtError", "free_tcp_port", "missing_requirements"]
