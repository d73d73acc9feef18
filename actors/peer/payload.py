"""The bytes every flow carries: a keystream indexed by (flow id, absolute stream offset).

Byte ``k`` of flow ``f`` is a pure function of ``(f, k)``, produced in 4 KiB chunks by an
extendable-output hash (SHAKE-128) of the flow id and the chunk index. The stream is not
periodic, differs between flows and between offsets, so a reader that checks every byte
it receives against :func:`payload_bytes` detects duplication, reordering, gaps,
truncation and corruption alike.
"""

from __future__ import annotations

import hashlib
import struct
from functools import lru_cache

CHUNK_SIZE = 4096
_DOMAIN = b"rxpath-payload-v1"
_CHUNK_KEY = struct.Struct("<qQ")


@lru_cache(maxsize=512)
def _chunk(flow_id: int, index: int) -> bytes:
    """Chunk ``index`` (bytes ``[index*CHUNK_SIZE, (index+1)*CHUNK_SIZE)``) of a flow."""
    h = hashlib.shake_128(_DOMAIN)
    h.update(_CHUNK_KEY.pack(flow_id, index))
    return h.digest(CHUNK_SIZE)


def payload_bytes(flow_id: int, offset: int, length: int) -> bytes:
    """The ``length`` bytes of flow ``flow_id`` starting at absolute stream ``offset``.

    Offset 0 is the first data byte (sequence number ISN + 1).
    """
    if offset < 0 or length < 0:
        raise ValueError(f"offset and length must be non-negative (got {offset}, {length})")
    if length == 0:
        return b""
    index, skip = divmod(offset, CHUNK_SIZE)
    first = _chunk(flow_id, index)
    if skip + length <= CHUNK_SIZE:
        return first[skip:skip + length]
    parts = [first[skip:]]
    remaining = length - (CHUNK_SIZE - skip)
    while remaining > 0:
        index += 1
        chunk = _chunk(flow_id, index)
        if remaining >= CHUNK_SIZE:
            parts.append(chunk)
        else:
            parts.append(chunk[:remaining])
        remaining -= CHUNK_SIZE
    return b"".join(parts)


def verify(flow_id: int, offset: int, data: bytes | bytearray | memoryview) -> int | None:
    """Check ``data`` as the flow's bytes at ``offset``.

    Returns the absolute stream offset of the first wrong byte, or None when every byte
    matches.
    """
    return first_difference(payload_bytes(flow_id, offset, len(data)), offset, data)


def first_difference(expected: bytes, offset: int, data: bytes | bytearray | memoryview
                     ) -> int | None:
    """The stream offset of the first byte of ``data`` (at ``offset``) that is not
    ``expected``'s, or None; past the end of a shorter ``expected`` every byte is wrong."""
    if expected == data:
        return None
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    # Narrow down block-wise, then byte-wise: mismatches are rare, but data can be large.
    step = 256
    for start in range(0, len(expected), step):
        if expected[start:start + step] != bytes(view[start:start + step]):
            for i in range(start, min(start + step, len(expected))):
                if expected[i] != view[i]:
                    return offset + i
    return offset + len(expected)  # a prefix of data is all of expected
