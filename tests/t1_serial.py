"""RFC 1982 serial arithmetic on 32-bit sequence numbers (iscsifs.core.serial)."""

import pytest

from iscsifs.core.serial import (
    SERIAL_MASK, sn_add, sn_ge, sn_gt, sn_in_window, sn_le, sn_lt, sn_window_valid,
)

TOP = SERIAL_MASK            # 0xffffffff
HALF = 1 << 31


@pytest.mark.parametrize("a, b", [
    (0, 1), (1, 2), (100, 200), (TOP, 0), (TOP - 5, 3), (TOP, HALF - 2), (HALF, HALF + 1),
    (0, HALF - 1), (HALF - 1, HALF), (TOP - 1, TOP),
])
def test_lt_including_wraparound(a, b):
    assert sn_lt(a, b)
    assert sn_le(a, b)
    assert sn_gt(b, a)
    assert sn_ge(b, a)
    assert not sn_lt(b, a)
    assert not sn_gt(a, b)
    assert not sn_le(b, a)


@pytest.mark.parametrize("a", [0, 1, HALF, TOP])
def test_equal(a):
    assert not sn_lt(a, a) and not sn_gt(a, a)
    assert sn_le(a, a) and sn_ge(a, a)


@pytest.mark.parametrize("a", [0, 7, HALF, TOP])
def test_exactly_half_apart_is_unordered(a):
    b = (a + HALF) & TOP
    for x, y in ((a, b), (b, a)):
        assert not sn_lt(x, y) and not sn_gt(x, y)
        assert not sn_le(x, y) and not sn_ge(x, y)


def test_add_wraps():
    assert sn_add(TOP, 1) == 0
    assert sn_add(TOP, 2) == 1
    assert sn_add(0, -1) == TOP
    assert sn_add(5, HALF - 1) == (5 + HALF - 1)
    assert sn_lt(TOP, sn_add(TOP, 1))


@pytest.mark.parametrize("n", [HALF, -HALF, 1 << 32])
def test_add_out_of_range(n):
    with pytest.raises(ValueError):
        sn_add(0, n)


@pytest.mark.parametrize("sn, exp, max_, inside", [
    (10, 10, 20, True),
    (20, 10, 20, True),
    (15, 10, 20, True),
    (9, 10, 20, False),
    (21, 10, 20, False),
    # window across the wrap
    (TOP, TOP - 1, 3, True),
    (0, TOP - 1, 3, True),
    (3, TOP - 1, 3, True),
    (4, TOP - 1, 3, False),
    (TOP - 2, TOP - 1, 3, False),
    # one-slot window
    (5, 5, 5, True),
    (6, 5, 5, False),
])
def test_in_window(sn, exp, max_, inside):
    assert sn_in_window(sn, exp, max_) is inside


@pytest.mark.parametrize("exp", [0, 1, 10, HALF, TOP])
def test_window_closed_when_max_is_exp_minus_one(exp):
    max_ = (exp - 1) & TOP
    assert sn_window_valid(exp, max_)
    for sn in (exp, max_, (exp + 1) & TOP, (exp - 2) & TOP, 0, TOP):
        assert not sn_in_window(sn, exp, max_)


def test_window_validity():
    assert sn_window_valid(10, 10)
    assert sn_window_valid(10, 9)          # closed but valid
    assert not sn_window_valid(10, 8)      # MaxCmdSN < ExpCmdSN - 1: ignore
    assert sn_window_valid(TOP, 5)
    assert sn_window_valid(0, TOP)         # closed across the wrap
    assert not sn_window_valid(0, TOP - 1)
