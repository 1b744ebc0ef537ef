"""Serial number arithmetic (RFC 1982, SERIAL_BITS = 32) for iSCSI sequence numbers.

Owns: comparison and addition of CmdSN, StatSN, DataSN, R2TSN, ExpCmdSN and MaxCmdSN values,
and the RFC 7143 §4.2.2.1 command window test.  Must not know: PDUs, connections, or I/O.

RFC 1982 leaves the comparison of two numbers exactly 2^31 apart undefined; here neither is
less than (nor greater than) the other.
"""

from __future__ import annotations

SERIAL_BITS = 32
SERIAL_MASK = (1 << SERIAL_BITS) - 1
_HALF = 1 << (SERIAL_BITS - 1)
MAX_ADD = _HALF - 1      # RFC 1982 §3.1: n may be 0 .. 2^(SERIAL_BITS-1) - 1


def sn_lt(a: int, b: int) -> bool:
    """a < b in serial arithmetic."""
    d = (b - a) & SERIAL_MASK
    return 0 < d < _HALF


def sn_le(a: int, b: int) -> bool:
    """a <= b in serial arithmetic."""
    return ((b - a) & SERIAL_MASK) < _HALF


def sn_gt(a: int, b: int) -> bool:
    """a > b in serial arithmetic."""
    d = (a - b) & SERIAL_MASK
    return 0 < d < _HALF


def sn_ge(a: int, b: int) -> bool:
    """a >= b in serial arithmetic."""
    return ((a - b) & SERIAL_MASK) < _HALF


def sn_add(a: int, n: int) -> int:
    """a + n modulo 2^32.  ``n`` within +-(2^31 - 1) (RFC 1982 allows 0 .. 2^31 - 1; a
    negative n is the matching subtraction).  ValueError outside that range."""
    if not -MAX_ADD <= n <= MAX_ADD:
        raise ValueError(f"serial number increment {n} outside +-{MAX_ADD}")
    return (a + n) & SERIAL_MASK


def sn_window_valid(exp_cmd_sn: int, max_cmd_sn: int) -> bool:
    """RFC 7143 §4.2.2.1: a (ExpCmdSN, MaxCmdSN) pair with MaxCmdSN < ExpCmdSN - 1 in serial
    arithmetic is invalid and must be ignored.  MaxCmdSN = ExpCmdSN - 1 is valid (window
    closed)."""
    return sn_le(sn_add(exp_cmd_sn, -1), max_cmd_sn)


def sn_in_window(sn: int, exp: int, max: int) -> bool:  # noqa: A002 (RFC name)
    """ExpCmdSN <= sn <= MaxCmdSN in serial arithmetic.

    MaxCmdSN = ExpCmdSN - 1 means the window is closed (zero commands may be sent), so this
    returns False for every ``sn``.
    """
    if max == (exp - 1) & SERIAL_MASK:
        return False
    return sn_le(exp, sn) and sn_le(sn, max)
