"""TCP sequence-number arithmetic: 32-bit values compared modulo 2**32 (RFC 793 / RFC 1982).

These mirror the kernel's ``before()``/``after()`` helpers in include/net/tcp.h.
"""

from __future__ import annotations

SEQ_MOD = 1 << 32
SEQ_MASK = SEQ_MOD - 1
SEQ_HALF = _HALF = 1 << 31  # bit 31: a wrapped difference at or above it is negative


def seq_add(seq: int, n: int) -> int:
    """``seq + n`` wrapped to 32 bits."""
    return (seq + n) & SEQ_MASK


def seq_sub(a: int, b: int) -> int:
    """The signed distance ``a - b`` interpreted as a 32-bit two's-complement value."""
    d = (a - b) & SEQ_MASK
    return d - SEQ_MOD if d >= _HALF else d


# The comparisons test bit 31 of the wrapped difference directly: the hot path calls
# them for every segment, and this saves a call into seq_sub.


def before(a: int, b: int) -> bool:
    """True when ``a`` comes strictly before ``b`` in sequence space."""
    return ((a - b) & SEQ_MASK) >= _HALF


def after(a: int, b: int) -> bool:
    """True when ``a`` comes strictly after ``b`` in sequence space."""
    return ((b - a) & SEQ_MASK) >= _HALF


def before_eq(a: int, b: int) -> bool:
    return ((b - a) & SEQ_MASK) < _HALF


def after_eq(a: int, b: int) -> bool:
    return ((a - b) & SEQ_MASK) < _HALF


def between(seq: int, low: int, high: int) -> bool:
    """``low <= seq <= high`` in sequence space (the kernel's ``between()``)."""
    return ((high - low) & SEQ_MASK) >= ((seq - low) & SEQ_MASK)


def seq_max(a: int, b: int) -> int:
    return b if ((a - b) & SEQ_MASK) >= _HALF else a


def seq_min(a: int, b: int) -> int:
    return b if ((b - a) & SEQ_MASK) >= _HALF else a
