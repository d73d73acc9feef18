"""The flow keystream (actors/peer/payload.py): deterministic, position-addressed, checkable."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.peer.payload import CHUNK_SIZE, payload_bytes, verify


def test_known_answer_pins_the_format() -> None:
    # Sender and reader run in different processes (and versions): the format is fixed.
    expected = hashlib.shake_128(b"rxpath-payload-v1" + struct.pack("<qQ", 7, 0)).digest(32)
    assert payload_bytes(7, 0, 32) == expected
    second_chunk = hashlib.shake_128(b"rxpath-payload-v1" + struct.pack("<qQ", 7, 1))
    assert payload_bytes(7, CHUNK_SIZE, 16) == second_chunk.digest(16)


def test_lengths_and_empty_reads() -> None:
    assert payload_bytes(1, 12345, 0) == b""
    for length in (1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 17):
        assert len(payload_bytes(1, 999, length)) == length


def test_same_inputs_same_bytes_different_inputs_differ() -> None:
    assert payload_bytes(3, 100, 500) == payload_bytes(3, 100, 500)
    assert payload_bytes(3, 100, 500) != payload_bytes(4, 100, 500)
    assert payload_bytes(3, 100, 500) != payload_bytes(3, 101, 500)
    # Not periodic at the chunk size: a reader could not mistake chunk k for chunk k+1.
    assert payload_bytes(3, 0, CHUNK_SIZE) != payload_bytes(3, CHUNK_SIZE, CHUNK_SIZE)


def test_negative_arguments_are_rejected() -> None:
    with pytest.raises(ValueError):
        payload_bytes(1, -1, 10)
    with pytest.raises(ValueError):
        payload_bytes(1, 0, -10)


@given(flow=st.integers(-(2**63), 2**63 - 1), offset=st.integers(0, 10**9),
       length=st.integers(0, 3 * CHUNK_SIZE), cut=st.integers(0, 3 * CHUNK_SIZE))
def test_any_split_of_a_range_reads_the_same_bytes(flow: int, offset: int, length: int,
                                                   cut: int) -> None:
    cut = min(cut, length)
    whole = payload_bytes(flow, offset, length)
    assert whole == payload_bytes(flow, offset, cut) + payload_bytes(flow, offset + cut,
                                                                     length - cut)


def test_verify_accepts_the_right_bytes_in_any_buffer_type() -> None:
    data = payload_bytes(9, 5000, 3000)
    assert verify(9, 5000, data) is None
    assert verify(9, 5000, bytearray(data)) is None
    assert verify(9, 5000, memoryview(data)) is None
    assert verify(9, 5000, b"") is None


@given(offset=st.integers(0, 10**6), length=st.integers(1, 2000), data=st.data())
def test_verify_reports_the_first_wrong_byte(offset: int, length: int,
                                             data: st.DataObject) -> None:
    good = bytearray(payload_bytes(2, offset, length))
    pos = data.draw(st.integers(0, length - 1))
    good[pos] ^= data.draw(st.integers(1, 255))
    if pos + 1 < length and data.draw(st.booleans()):
        good[-1] ^= 0xFF  # a later error does not hide the first one
    assert verify(2, offset, good) == offset + pos


def test_verify_catches_duplication_reordering_and_other_flows() -> None:
    a = payload_bytes(5, 0, 1000)
    b = payload_bytes(5, 1000, 1000)
    assert verify(5, 0, a + b) is None
    assert verify(5, 0, b + a) == 0  # reordered
    assert verify(5, 0, a + a) is not None  # duplicated instead of new bytes
    assert verify(5, 0, a[:500] + a[501:] + b[:1]) is not None  # a byte missing
    assert verify(6, 0, a) == 0  # another flow's bytes
