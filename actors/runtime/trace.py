"""Trace recording: each actor appends compact JSON-lines records to ``DIR/trace/<name>.jsonl``.

Separate from the structlog logs: these are the raw material of ``rxpath trace``, which
merges every actor's file into one Chrome/Perfetto trace-event JSON.  Records are kept
in memory as JSON lines and written in batches (and on :meth:`TraceWriter.close`), so a
hand-formatted record (:meth:`TraceWriter.line`) costs one list append on the hot path and
a flush is one string join.

One JSON array per line; times are integer nanoseconds of ``time.monotonic_ns()``
(CLOCK_MONOTONIC is system-wide, so the files of one host share a clock)::

    ["M", {"name": "cpu0", "role": "cpu", "os_pid": 4242, "incarnation": 0}]
    ["M", {"t0_ns": 123456789}]                      # the run start (launcher's start)
    ["X", start, dur, tid, name, args, flows, pid]   # a complete slice
    ["C", ts, name, {series: value}, pid]            # a counter sample
    ["i", ts, tid, name, args, pid]                  # an instant event (a drop, a SACK)

A counter series named ``"<track>/<unit>"`` becomes its own counter track
``"<name> <track>"`` with values in ``<unit>``; a plain series name stays on ``<name>``.

``tid`` names a thread track inside the process (``"softirq"``, ``"main"``...).
``pid`` is null for the recording actor's own process, or another actor's name for work
done on its behalf (the stack's backlog processing appears on the reader's track).

Flow ids.  Every frame on the wire gets a run-unique id where it is first sent (the peer
for data, the stack for ACKs), and the id travels with the frame in an optional ``ids``
list beside ``frames`` in the wire/dma/rcv_batch/tx messages.  Carrying a list of ints
is cheaper than hashing frames at every hop, and sound where hashing is not: a
duplicated frame has the same bytes as its original but a different id.  Inside the
stack the id is the skb's arrival id, so it follows the segment into the backlog,
prequeue, out-of-order and receive queues and is retired with the skb's fate.

``flows`` is a list of ``[hop, [id, ...]]``: the ids of the frames that passed this
slice, with the hop number saying where on the path it is (:data:`HOP_SOURCE` ...
:data:`HOP_END`).  The merger orders each flow's points by hop, so it can check that
the arrows never point backwards in time rather than assume it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

TRACE_DIR = "trace"
DEFAULT_FLUSH_EVERY = 4096  # records: a small live set keeps the cyclic GC cheap

# Where a flow point is on a frame's path; the merger sorts a flow's points by this.
HOP_SOURCE = 0  # the sender puts the frame on the wire (peer: data; stack: ACKs)
HOP_NIC = 1  # the NIC: DMA into a ring (or rx_missed), or TX to the wire
HOP_NAPI = 2  # napi_poll took it off the ring and ran ip_rcv
HOP_TCP_V4_RCV = 3  # tcp_v4_rcv in softirq context
HOP_PROCESS_CONTEXT = 4  # backlog / prequeue processing on behalf of a reader
HOP_END = 5  # its fate: bytes copied to a reader, consumed, dropped, or ACK received

# Flow ids: origin << 44 | incarnation << 36 | counter; below 2**53, so exact in JSON.
FLOW_ID_SHIFT = 44
FLOW_ID_MIN = 1 << FLOW_ID_SHIFT
ORIGIN_PEER = 1
ORIGIN_STACK = 2
_INCARNATION_SHIFT = 36
_COUNTER_MASK = (1 << _INCARNATION_SHIFT) - 1

_json_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False,
                                default=repr).encode


def _make_encode() -> Callable[[Any], str]:
    """The C encoder behind ``_json_encode``, made once: ``JSONEncoder.encode`` builds a
    new one for every record, which is half the cost of a small record. Its signature is
    CPython's own, so it is checked against ``_json_encode`` and left out if it differs."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _json_encode
    try:
        encoder = make(None, repr, json.encoder.encode_basestring_ascii, None, ":", ",",
                       False, False, True)
        sample = ["X", 1, 2.5, "t\u00e9", None, {"a": [True, -1]}, [[2, [FLOW_ID_MIN]]]]
        if "".join(encoder(sample, 0)) != _json_encode(sample):
            return _json_encode
    except (TypeError, ValueError):
        return _json_encode
    return lambda record: "".join(encoder(record, 0))


_encode = _make_encode()


def is_flow_id(value: object) -> bool:
    """True for an id made by :class:`FlowIds` (the stack's own arrival ids are small)."""
    return isinstance(value, int) and value >= FLOW_ID_MIN


def flow_ids(ids: Iterable[int]) -> list[int]:
    """The flow ids among ``ids``, in order, as a new list. That all of them are, the
    common case, is told by one ``min``."""
    if isinstance(ids, list):
        try:
            if not ids or min(ids) >= FLOW_ID_MIN:
                return ids.copy()
        except TypeError:  # a value that is not a number: filter one by one
            pass
    return [i for i in ids if is_flow_id(i)]


class FlowIds:
    """Run-unique ids for the frames one sender puts on the wire."""

    __slots__ = ("_next", "base")

    def __init__(self, origin: int, incarnation: int = 0) -> None:
        if not 1 <= origin < 256:
            raise ValueError("origin must be in 1..255")
        self.base = (origin << FLOW_ID_SHIFT) | ((incarnation & 0xFF) << _INCARNATION_SHIFT)
        self._next = 0

    def next_id(self) -> int:
        n = self._next
        if n >= _COUNTER_MASK:
            raise OverflowError("flow id counter exhausted")
        self._next = n + 1
        return self.base | n

    def take(self, n: int) -> list[int]:
        start = self._next
        self._next = start + n
        if self._next > _COUNTER_MASK:
            raise OverflowError("flow id counter exhausted")
        base = self.base
        return [base | i for i in range(start, start + n)]


def trace_path(run_dir: str | Path, name: str, incarnation: int = 0) -> Path:
    """``DIR/trace/<name>.jsonl``; a restarted actor writes ``<name>.<incarnation>.jsonl``."""
    suffix = f".{incarnation}" if incarnation else ""
    return Path(run_dir) / TRACE_DIR / f"{name}{suffix}.jsonl"


def clock_domain() -> str:
    """Which CLOCK_MONOTONIC this process reads: the boot id (containers on one host share
    it); the merger aligns the files of different domains."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return os.uname().nodename


def tracing_enabled(setting: object = True) -> bool:
    """The topology's ``runtime.trace`` (default on), unless ``RXPATH_TRACE=0``."""
    env = os.environ.get("RXPATH_TRACE", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    return bool(setting)


class OpenSlice:
    """A slice that has begun and not ended yet (spans several messages)."""

    __slots__ = ("args", "flows", "name", "pid", "start", "tid")

    def __init__(self, name: str, start: int, tid: str, args: dict[str, Any] | None,
                 pid: str | None) -> None:
        self.name = name
        self.start = start
        self.tid = tid
        self.args = args
        self.flows: list[list[Any]] = []
        self.pid = pid


class TraceWriter:
    """Buffered trace records for one actor process; ``path=None`` records nothing.

    Callers test :attr:`on` before building a record's arguments, so a disabled writer
    costs one attribute test.
    """

    def __init__(self, path: str | Path | None, *, flush_every: int = DEFAULT_FLUSH_EVERY,
                 meta: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.on = self.path is not None
        self.flush_every = max(1, flush_every)
        self._written = 0
        # Lines already in their JSON form: a flush is one join, no per-record work.
        self._buf: list[str] = []
        self._file: TextIO | None = None
        self._open: dict[Any, OpenSlice] = {}
        self._last: dict[tuple[str | None, str], Any] = {}  # counter dedupe
        self._closed = False
        if self.on and meta:
            self.meta(**meta)

    # --- records ----------------------------------------------------------------------

    @property
    def records(self) -> int:
        """Records written or buffered, for tests and the overhead figure."""
        return self._written + len(self._buf)

    def _add(self, record: list[Any]) -> None:
        buf = self._buf
        buf.append(_encode(record))
        if len(buf) >= self.flush_every:
            self.flush()

    def line(self, text: str) -> None:
        """A record already in its JSON form (the hottest call sites format their own:
        an f-string is several times cheaper than encoding a fresh dict)."""
        if self.on:
            buf = self._buf
            buf.append(text)
            if len(buf) >= self.flush_every:
                self.flush()

    def meta(self, **fields: Any) -> None:
        if self.on:
            self._add(["M", fields])

    def complete(self, name: str, start: int, end: int, tid: str = "main", *,
                 args: dict[str, Any] | None = None,
                 flows: list[list[Any]] | None = None, pid: str | None = None) -> None:
        """A slice from ``start`` to ``end`` (ns) on thread ``tid``."""
        if self.on:
            self._add(["X", start, max(0, end - start), tid, name, args, flows or None, pid])

    def instant(self, name: str, ts: int, tid: str = "main", *,
                args: dict[str, Any] | None = None, pid: str | None = None) -> None:
        """Something that happened at one moment (a drop and its reason, a SACK sent)."""
        if self.on:
            self._add(["i", ts, tid, name, args, pid])

    def counter(self, name: str, ts: int, values: Mapping[str, int | float], *,
                pid: str | None = None, dedupe: bool = True) -> None:
        """A counter sample; skipped when no series changed since the last sample (a caller
        that checks that itself passes ``dedupe=False`` and a dict it will not reuse)."""
        if not self.on:
            return
        if dedupe:
            key = (pid, name)
            if self._last.get(key) == values:
                return
            values = dict(values)
            self._last[key] = values
        self._add(["C", ts, name, values, pid])

    # --- slices that span messages --------------------------------------------------------

    def begin(self, key: Any, name: str, start: int, tid: str = "main", *,
              args: dict[str, Any] | None = None, pid: str | None = None) -> OpenSlice | None:
        """Open a slice under ``key``; an open slice under the same key is ended first."""
        if not self.on:
            return None
        if key in self._open:
            self.end(key, start)
        sl = OpenSlice(name, start, tid, dict(args) if args else None, pid)
        self._open[key] = sl
        return sl

    def is_open(self, key: Any) -> bool:
        return key in self._open

    def add_flows(self, key: Any, hop: int, ids: Iterable[int]) -> None:
        """Bind flow points to the open slice ``key``."""
        sl = self._open.get(key)
        if sl is not None:
            kept = flow_ids(ids)
            if kept:
                sl.flows.append([hop, kept])

    def end(self, key: Any, end: int, *, args: Mapping[str, Any] | None = None) -> None:
        sl = self._open.pop(key, None)
        if sl is None:
            return
        if args:
            sl.args = {**(sl.args or {}), **args}
        self.complete(sl.name, sl.start, end, sl.tid, args=sl.args, flows=sl.flows, pid=sl.pid)

    # --- output -------------------------------------------------------------------------

    def flush(self) -> None:
        if not self._buf or self.path is None:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        buf = self._buf
        buf.append("")  # the last line's newline
        self._file.write("\n".join(buf))
        self._written += len(buf) - 1
        buf.clear()
        self._file.flush()

    def close(self, now: int) -> None:
        """End every open slice at ``now`` (marked unfinished), write, close the file."""
        if self._closed:
            return
        self._closed = True
        for key in list(self._open):
            self.end(key, now, args={"unfinished": True})
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
        self.on = False


def json_str(text: str) -> str:
    """``text`` as a JSON string literal, for records formatted by hand."""
    return json.dumps(text)


def flows_of(hop_ids: Mapping[int, list[int]]) -> list[list[Any]] | None:
    """``{hop: ids}`` as a record's ``flows`` (ids that are not flow ids are left out)."""
    out = []
    for hop, ids in hop_ids.items():
        kept = flow_ids(ids)
        if kept:
            out.append([hop, kept])
    return out or None
