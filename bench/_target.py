"""The one place the benchmarks (bench.py, breakdown.py, soak.py) import the private-tgtd
harness from."""
from iscsifs_testbed.tgtd import Tgtd, free_tcp_port, missing_requirements  # noqa: F401

__all__ = ["Tgtd", "free_tcp_port", "missing_requirements"]
