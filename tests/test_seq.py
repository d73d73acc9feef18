"""Sequence-number arithmetic modulo 2**32 (protocol/seq.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.seq import (
    SEQ_MASK,
    SEQ_MOD,
    after,
    after_eq,
    before,
    before_eq,
    between,
    seq_add,
    seq_max,
    seq_min,
    seq_sub,
)

u32 = st.integers(0, SEQ_MASK)
HALF = 1 << 31


def test_seq_add_wraps() -> None:
    assert seq_add(SEQ_MASK, 1) == 0
    assert seq_add(SEQ_MASK, 10) == 9
    assert seq_add(0, -1) == SEQ_MASK
    assert seq_add(5, 0) == 5


def test_seq_sub_is_signed_32_bit_distance() -> None:
    assert seq_sub(0, SEQ_MASK) == 1
    assert seq_sub(SEQ_MASK, 0) == -1
    assert seq_sub(10, 3) == 7
    assert seq_sub(3, 10) == -7
    assert seq_sub(HALF - 1, 0) == HALF - 1
    # Exactly half the space apart reads as negative, like (s32)(a - b) in C.
    assert seq_sub(HALF, 0) == -HALF
    assert seq_sub(0, HALF) == -HALF


def test_before_after_across_wrap() -> None:
    assert before(0xFFFFFFF0, 0x10)
    assert after(0x10, 0xFFFFFFF0)
    assert not after(0xFFFFFFF0, 0x10)
    assert not before(0x10, 0xFFFFFFF0)
    assert before(1, 2) and not before(2, 1)


def test_before_is_strict_and_eq_variants_are_not() -> None:
    assert not before(7, 7)
    assert not after(7, 7)
    assert before_eq(7, 7)
    assert after_eq(7, 7)
    assert before_eq(SEQ_MASK, 0)
    assert not after_eq(SEQ_MASK, 0)


def test_half_space_apart_is_before_both_ways() -> None:
    # The kernel's before() has this ambiguity too: (s32)0x80000000 < 0 both ways.
    assert before(0, HALF) and before(HALF, 0)


@pytest.mark.parametrize(
    ("seq", "low", "high", "expected"),
    [
        (5, 5, 10, True),
        (10, 5, 10, True),
        (7, 5, 10, True),
        (4, 5, 10, False),
        (11, 5, 10, False),
        (0, SEQ_MASK - 2, 3, True),  # window straddling the wrap
        (SEQ_MASK, SEQ_MASK - 2, 3, True),
        (4, SEQ_MASK - 2, 3, False),
        (SEQ_MASK - 3, SEQ_MASK - 2, 3, False),
        (9, 9, 9, True),
        (10, 9, 9, False),
    ],
)
def test_between_cases(seq: int, low: int, high: int, expected: bool) -> None:
    assert between(seq, low, high) is expected


def test_seq_max_min_across_wrap() -> None:
    assert seq_max(SEQ_MASK, 3) == 3
    assert seq_min(SEQ_MASK, 3) == SEQ_MASK
    assert seq_max(4, 4) == 4


@given(u32, u32)
def test_after_is_before_swapped(a: int, b: int) -> None:
    assert after(a, b) == before(b, a)
    assert before_eq(a, b) == (not after(a, b))
    assert after_eq(a, b) == (not before(a, b))


@given(u32, u32)
def test_antisymmetry(a: int, b: int) -> None:
    distance = (a - b) & SEQ_MASK
    if distance == 0:
        assert not before(a, b) and not before(b, a)
    elif distance == HALF:
        assert before(a, b) and before(b, a)
    else:
        # Exactly one of the two orders holds.
        assert before(a, b) != before(b, a)


@given(u32, st.integers(1, HALF - 1))
def test_forward_within_half_space_is_after(a: int, d: int) -> None:
    b = seq_add(a, d)
    assert after(b, a)
    assert before(a, b)
    assert seq_sub(b, a) == d
    assert seq_sub(a, b) == -d


@given(u32, u32, u32)
def test_order_is_translation_invariant(a: int, b: int, k: int) -> None:
    assert before(a, b) == before(seq_add(a, k), seq_add(b, k))
    assert seq_sub(a, b) == seq_sub(seq_add(a, k), seq_add(b, k))


@given(u32, st.integers(-(2**40), 2**40))
def test_seq_add_then_sub_round_trips(a: int, n: int) -> None:
    b = seq_add(a, n)
    assert 0 <= b < SEQ_MOD
    # The signed distance recovers n whenever n fits in a signed 32-bit value.
    if -HALF <= n < HALF:
        assert seq_sub(b, a) == n


@given(u32, st.integers(0, SEQ_MASK), st.integers(0, SEQ_MASK))
def test_between_matches_offsets(low: int, n: int, i: int) -> None:
    high = seq_add(low, n)
    assert between(seq_add(low, i), low, high) == (i <= n)


@given(u32, u32, u32)
def test_between_agrees_with_before_after_in_short_windows(seq: int, low: int, span: int) -> None:
    span %= HALF  # within half the space before/after are unambiguous
    high = seq_add(low, span)
    expected = after_eq(seq, low) and before_eq(seq, high)
    assert between(seq, low, high) == expected


@given(u32, u32)
def test_seq_max_min(a: int, b: int) -> None:
    if (a - b) & SEQ_MASK == HALF:
        return  # no order exists half the space apart (see test_half_space_apart...)
    hi, lo = seq_max(a, b), seq_min(a, b)
    assert {hi, lo} == {a, b}
    assert not before(hi, lo)
    assert not after(lo, hi)
