"""The one place the benchmark imports the private-tgtd harness from.

The harness is moving to another package; when it does, only this import changes.
"""
from iscsifs.localtarget import Tgtd, missing_requirements  # noqa: F401

__all__ = ["Tgtd", "missing_requirements"]
