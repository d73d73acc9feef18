"""The stack's input record, and its replay through the stack model.

The stack process records, in the order it handled them, every input it gave the
stack model (:class:`~actors.stack.tcp_ipv4.Stack`) with the ``now`` it passed, and
everything the model gave back (the replies to socket calls, the ACKs and wakeups
taken from its output list, the counter snapshots the shell reported).  Concurrency
decides that order (which cpu's batch, which reader's step, which timer came first);
once it is written down, the model is a deterministic function of it, so
:func:`replay` runs the same model over the same order in one process and compares
every output and every snapshot with what the run produced.

File: ``RUN_DIR/stack-inputs/<actor>.<incarnation>.msgpack``, one per stack process.
It starts with :data:`MAGIC`; then frames, each ``<u32 length><u32 crc32>`` and
``length`` bytes holding back-to-back msgpack records.  A frame is written whole when
its buffer passes :data:`FRAME_BYTES`, or :data:`FRAME_NS` after the last one, and at
exit; a killed process leaves every frame it wrote readable, and at most a torn last
one, which :func:`read_record` reports and skips.

Records are msgpack arrays, the first item a tag:

=========  =======================================================================
``HEAD``   ``[HEAD, {"actor", "incarnation", "scenario"}]`` (the scenario dict the
           process was given: it rebuilds the same model)
``LISTEN`` ``[LISTEN, now, laddr, port, backlog, rcvbuf, rcvlowat]``
``SEG``    ``[SEG, now, frame]``, ``[SEG, now, frame, seg_id, gso_size]`` or, for a
           GRO skb, ``[SEG, now, frame, seg_id, gso_size, wire frames]``:
           ``tcp_v4_rcv_frame`` (the shell's ``segments`` counts wire frames)
``TIMERS`` ``[TIMERS, now]``: ``run_timers``
``OP``     ``[OP, now, task, op, sock, args]``: ``sock_op_msg``, as the message had it
``EXIT``   ``[EXIT, now, task]``: ``task_exit`` (a reader process died)
``REPLY``  ``[REPLY, result]``: what the ``OP`` just before returned at once
``OUT``    ``[OUT, frames, dones]``: the outputs one ``take_outputs`` gave the shell:
           the encoded frames sent to the NIC and ``[task, sock, result]`` of
           each completed sleep (trace events are not outputs)
``SNAP``   ``[SNAP, now, counters]``: :func:`model_counters` as the shell reported it
``END``    ``[END, reason]``: the process closed the record (absent if it was killed)
=========  =======================================================================

A result is the encoded one (:func:`~protocol.sockops.encode_result`), its copied bytes
(``data``, ``direct``) kept as their length and CRC-32 (:func:`recorded_result`): the
replay makes those bytes again and compares them so, and the readers' deliveries hold
them already. Whole, they were half of a record. A record from before keeps them whole;
the replay compares it the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from actors.mib import current_counters
from actors.scenario import Scenario
from actors.stack.net import OpDone, Transmit, current_drops
from actors.stack.sock import TcpState
from actors.stack.tcp_ipv4 import Stack, sock_info
from protocol.sockops import Copied, SockOpResult, encode_result
from protocol.wire import MalformedPacket, decode_ipv4, decode_tcp, encode

MAGIC = b"RXSTKIN1"
RECORD_DIR = "stack-inputs"
FRAME_HEADER = struct.Struct("<II")
FRAME_BYTES = 256 * 1024
FRAME_NS = 50_000_000  # a killed stack loses at most this much of its record

HEAD, LISTEN, SEG, TIMERS, OP, EXIT, REPLY, OUT, SNAP, END = range(10)
TAG_NAMES = ("head", "listen", "segment", "timers", "sock_op", "task_exit", "reply",
             "outputs", "snapshot", "end")
INPUTS = frozenset({LISTEN, SEG, TIMERS, OP, EXIT})
# Counters of the shell's own queues, not of the model: a replay has no batches in hand.
SHELL_COUNTERS = ("batches_waiting", "frames_waiting")


def record_path(run_dir: Path, actor: str, incarnation: int) -> Path:
    return Path(run_dir) / RECORD_DIR / f"{actor}.{incarnation}.msgpack"


def open_record(run_dir: Path, actor: str, incarnation: int, scenario: Mapping[str, Any],
                log: Any) -> RecordWriter | None:
    """The record of one stack process; None when ``RXPATH_STACK_RECORD=0`` or when it
    cannot be created (logged: the run goes on without it)."""
    if os.environ.get("RXPATH_STACK_RECORD", "1") == "0":
        return None
    path = record_path(run_dir, actor, incarnation)
    try:
        return RecordWriter(path, {"actor": actor, "incarnation": incarnation,
                                   "scenario": dict(scenario)})
    except OSError as err:
        log.warning("stack_record_unavailable", path=str(path), error=str(err))
        return None


# --- the model, as both the process and the replay build and read it ------------------


def build_stack(sc: Scenario) -> Stack:
    """The stack model of a run of ``sc`` (the process and the replay build the same)."""
    return Stack(sc.kernel_profile, sc.sysctl, seed=sc.seed_for("stack"),
                 emit_events=True, device=sc.nic.device)


def model_counters(stack: Stack, now: int) -> dict[str, Any]:
    """The model's counters at ``now`` (the stack's stats without the shell's queues)."""
    net = stack.net
    return {
        "mib": dict(net.mib.nonzero()),
        "drops": dict(net.drop_counts),
        "sockets": [sock_info(sk, now) for sk in net.socks.values()
                    if sk.state != TcpState.LISTEN],
        "malformed": net.malformed_segments,
        "bad_sock_ops": net.bad_sock_ops,
        "task_exits": net.task_exits,
        "locks_released_by_exit": net.locks_released_by_exit,
        "backlog_enqueued": net.backlog_enqueued,
        "lock_waits": net.lock_waits,
    }


# --- writing ---------------------------------------------------------------------------


class RecordWriter:
    """Appends records to one stack process's file, a frame at a time.

    The hot path is one ``Packer.pack`` into a reused buffer per record; the file is
    written only when a frame is due (:meth:`maybe_flush`)."""

    def __init__(self, path: Path, head: Mapping[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = open(path, "wb")  # noqa: SIM115 -- process lifetime
        self._file.write(MAGIC)
        self.path = path
        self._packer = msgpack.Packer(autoreset=False, use_bin_type=True)
        self.pack = self._packer.pack  # (HOT) records go straight into the buffer
        self._last_ns = 0
        self.frames = 0
        self.records = 0  # records written out in frames so far
        self.pack((HEAD, dict(head)))
        self.flush()

    def maybe_flush(self, now: int) -> None:
        with self._packer.getbuffer() as buf:  # released at once: reset() refuses exports
            size = len(buf)
        if size >= FRAME_BYTES or (size and now - self._last_ns >= FRAME_NS):
            self._last_ns = now
            self.flush()

    def flush(self) -> None:
        if self._file is None:
            return
        data = self._packer.bytes()
        if not data:
            return
        self._file.write(FRAME_HEADER.pack(len(data), zlib.crc32(data)))
        self._file.write(data)
        self._file.flush()
        self._packer.reset()
        self.frames += 1

    def close(self, reason: str) -> None:
        if self._file is None:
            return
        self.pack((END, reason))
        self.flush()
        self._file.close()
        self._file = None

    # Records whose fields the shell has at hand: one call each, one tuple packed.
    def listen(self, now: int, laddr: str, port: int, backlog: int, rcvbuf: int | None,
               rcvlowat: int) -> None:
        self.pack((LISTEN, now, laddr, port, backlog, rcvbuf, rcvlowat))

    def reply(self, encoded: dict[str, Any]) -> None:
        self.pack((REPLY, recorded_result(encoded)))

    def outputs(self, frames: list[bytes], dones: list[OpDone]) -> None:
        self.pack((OUT, frames, [(d.task, d.sock_id, recorded_result(encode_result(d.result)))
                                 for d in dones]))


_COPIED_BYTES = ("data", "direct")


def recorded_result(encoded: dict[str, Any]) -> dict[str, Any]:
    """An encoded result as a record keeps it: bytes it copied as ``[length, crc32]``
    under ``<field>_crc32`` (none copied: left as they are). Idempotent; a result
    without copied bytes is itself."""
    if not any(type(v) is bytes and v for v in map(encoded.get, _COPIED_BYTES)):
        return encoded
    out = dict(encoded)
    for k in _COPIED_BYTES:
        v = out.get(k)
        if type(v) is bytes and v:
            del out[k]
            out[k + "_crc32"] = [len(v), zlib.crc32(v)]
    return out


# --- reading ---------------------------------------------------------------------------


class RecordError(ValueError):
    """Not a stack input record at all (the message says why)."""


@dataclass
class Record:
    path: Path
    head: dict[str, Any]
    records: list[list[Any]]          # every record after HEAD, in order
    frames: int
    truncated: str | None = None      # what was cut off at the end, if anything

    @property
    def ended(self) -> str | None:
        """The END record's reason; None when the process did not close the record."""
        if self.records and self.records[-1][0] == END:
            return str(self.records[-1][1])
        return None

    @property
    def inputs(self) -> int:
        return sum(1 for r in self.records if r[0] in INPUTS)


def iter_frames(data: bytes) -> Iterator[tuple[int, bytes | str]]:
    """(offset, payload) of each whole frame; last, (offset, why) if the tail is torn."""
    off = len(MAGIC)
    while off < len(data):
        if len(data) - off < FRAME_HEADER.size:
            yield off, f"{len(data) - off} bytes of a frame header"
            return
        length, crc = FRAME_HEADER.unpack_from(data, off)
        body = data[off + FRAME_HEADER.size:off + FRAME_HEADER.size + length]
        if len(body) < length:
            yield off, f"a frame of {length} bytes with {len(body)} present"
            return
        if zlib.crc32(body) != crc:
            yield off, f"a frame of {length} bytes whose CRC does not match"
            return
        yield off, body
        off += FRAME_HEADER.size + length


def read_record(path: Path) -> Record:
    """Every record a stack process wrote; a torn tail is skipped and described in
    :attr:`Record.truncated`. :class:`RecordError` if the file is not a record."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise RecordError(f"{path}: not a stack input record (no {MAGIC.decode()} header)")
    records: list[list[Any]] = []
    frames = 0
    truncated = None
    for off, body in iter_frames(data):
        if isinstance(body, str):
            truncated = f"{body} at byte {off} ({len(data) - off} bytes dropped)"
            break
        frames += 1
        unpacker = msgpack.Unpacker(raw=False, use_list=True, max_buffer_size=len(body) + 1)
        unpacker.feed(body)
        try:
            records.extend(unpacker)
        except (ValueError, msgpack.UnpackException) as err:
            # A frame whose CRC holds was written whole: this is not a torn tail.
            raise RecordError(f"{path}: frame at byte {off} does not decode: {err}") from None
    if not records or records[0][0] != HEAD:
        raise RecordError(f"{path}: the record does not start with its head")
    head = records.pop(0)[1]
    return Record(path, head, records, frames, truncated)


# --- replaying -------------------------------------------------------------------------


@dataclass(frozen=True)
class Divergence:
    """The first point where the replay and the record disagree."""

    index: int          # the record's index (0: the first after the head)
    now: int | None     # the model time of the last input before it
    what: str           # which counter, reply or output
    expected: Any
    got: Any
    input: str          # the last input handled before (what led to it)


@dataclass
class Chunk:
    """Bytes the model gave a task (a copy, or a direct copy into its buffer)."""

    task: str
    flow: str | None
    offset: int
    data: bytes
    index: int = 0  # the record (REPLY or OUT) that carried it


@dataclass
class ReplayResult:
    record: Record
    stack: Stack
    inputs: int = 0
    replies: int = 0
    outputs: int = 0                      # frames and completions compared
    snapshots: int = 0                    # SNAP records compared
    counters_compared: int = 0            # counters in the last snapshot compared
    last_snapshot: dict[str, Any] | None = None   # as recorded (model keys + segments)
    last_now: int | None = None
    chunks: list[Chunk] = field(default_factory=list)
    divergence: Divergence | None = None
    raised: tuple[int, str] | None = None  # (input index, exception) the model raised


def normalised(value: Any) -> Any:
    """``value`` as it reads back from msgpack (tuples become lists, and so on)."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Counters as ``path -> leaf`` (``mib.TcpExtTCPHPHits``, ``sockets[0].rcv_nxt``)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


def first_difference(expected: Mapping[str, Any], got: Mapping[str, Any]
                     ) -> tuple[str, Any, Any] | None:
    """The first counter (in the recorded order) whose values differ; a counter only one
    side has counts as absent (None) on the other."""
    for key in [*expected, *(k for k in got if k not in expected)]:
        e, g = expected.get(key), got.get(key)
        if e != g:
            return key, e, g
    return None


def compact(value: Any) -> Any:
    """``value`` with every long bytes field shown as its length and digest, so that a
    reply's other fields stay readable."""
    if isinstance(value, bytes) and len(value) > 16:
        return f"<{len(value)} bytes {hashlib.blake2b(value, digest_size=8).hexdigest()}>"
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [compact(v) for v in value]
    return value


def describe_frame(frame: bytes) -> str:
    try:
        seg = decode_tcp(decode_ipv4(frame), verify_checksum=False)
    except MalformedPacket as err:
        return f"undecodable frame ({err})"
    o = seg.options
    opts = "".join([f" mss={o.mss}" if o.mss is not None else "",
                    f" wscale={o.wscale}" if o.wscale is not None else "",
                    " sackOK" if o.sack_permitted else "",
                    f" sack={list(o.sack_blocks)}" if o.sack_blocks else "",
                    f" ts={o.timestamp[0]}/{o.timestamp[1]}" if o.timestamp else ""])
    return (f"{seg.src}:{seg.sport}>{seg.dst}:{seg.dport} flags={seg.flags:#04x} "
            f"seq={seg.seq} ack={seg.ack} win={seg.window} len={len(seg.payload)}{opts}")


def describe_input(index: int, r: list[Any]) -> str:
    tag = r[0]
    name = TAG_NAMES[tag] if 0 <= tag < len(TAG_NAMES) else f"tag {tag}"
    if tag == SEG:
        return f"input #{index} segment {describe_frame(r[2])}"
    if tag == OP:
        return f"input #{index} sock_op {r[3]} on socket {r[4]} by {r[2]}"
    if tag == EXIT:
        return f"input #{index} task_exit {r[2]}"
    return f"input #{index} {name}"


def _apply(stack: Stack, index: int, r: list[Any]
           ) -> tuple[int, str, Any, SockOpResult | None] | None:
    """Give input record ``r`` to the model, as the process did; for an OP, what its
    reply is to be checked against."""
    tag, now = r[0], r[1]
    if tag == SEG:
        if len(r) > 3:
            stack.tcp_v4_rcv_frame(r[2], now, seg_id=r[3], gso_size=r[4],
                                   gro_segs=r[5] if len(r) > 5 else 1)
        else:
            stack.tcp_v4_rcv_frame(r[2], now)
    elif tag == TIMERS:
        stack.run_timers(now)
    elif tag == OP:
        return index, r[2], r[4], stack.sock_op_msg(r[2], r[3], r[4], r[5], now)
    elif tag == EXIT:
        stack.task_exit(r[2], now)
    else:  # LISTEN
        _, _, laddr, port, backlog, rcvbuf, rcvlowat = r
        stack.listen(laddr, port, now, backlog=backlog, rcvbuf=rcvbuf, rcvlowat=rcvlowat)
    return None


def _compare_outputs(stack: Stack, r: list[Any]
                     ) -> tuple[list[OpDone], int, tuple[str, Any, Any] | None]:
    """Take the model's outputs as the shell did at this OUT record and compare them:
    (the completions, how many outputs, the first difference or None)."""
    frames: list[bytes] = []
    dones: list[OpDone] = []
    for out in stack.take_outputs():
        if isinstance(out, Transmit):
            frames.append(encode(out.segment))
        elif isinstance(out, OpDone):
            dones.append(out)
    want_frames, want_dones = r[1], r[2]
    for k in range(max(len(frames), len(want_frames))):
        want = want_frames[k] if k < len(want_frames) else None
        got = frames[k] if k < len(frames) else None
        if want != got:
            return dones, k, (f"frame {k} of {len(want_frames)} sent to the nic",
                              describe_frame(want) if want else "no frame",
                              describe_frame(got) if got else "no frame")
    got_dones = [[d.task, d.sock_id, recorded_result(encode_result(d.result))] for d in dones]
    for k in range(max(len(got_dones), len(want_dones))):
        want_done = want_dones[k] if k < len(want_dones) else None
        if want_done is not None and len(want_done) == 3 and isinstance(want_done[2], dict):
            want_done = [*want_done[:2], recorded_result(want_done[2])]
        got_done = got_dones[k] if k < len(got_dones) else None
        if want_done != got_done and (got_done is None or normalised(got_done) != want_done):
            return dones, k, (f"completed step {k} of {len(want_dones)}", want_done, got_done)
    return dones, len(frames) + len(dones), None


def replay(rec: Record) -> ReplayResult:
    """Run a fresh stack model over ``rec``'s inputs, in order, with their times, and
    compare each reply, each batch of outputs and each counter snapshot with the record;
    stops at the first divergence."""
    sc = Scenario.from_dict(rec.head["scenario"])
    stack = build_stack(sc)
    res = ReplayResult(rec, stack)
    flow_of_port = {f.sport: f.name for f in sc.flows}
    segments = 0
    last_input = -1  # described only if it comes to a divergence
    now: int | None = None
    # The OP just handled: (its index, task, socket, what the model returned).
    answer: tuple[int, str, Any, SockOpResult | None] | None = None

    def deliver(index: int, task: str, sock: Any, result: SockOpResult) -> None:
        sk = stack.socks.get(sock) if isinstance(sock, int) else None
        flow = flow_of_port.get(sk.rport) if sk is not None else None
        if result.direct:
            res.chunks.append(Chunk(task, flow, result.direct_offset, result.direct, index))
        if isinstance(result, Copied) and result.data:
            res.chunks.append(Chunk(task, flow, result.offset, result.data, index))

    def diverge(index: int, what: str, expected: Any, got: Any) -> ReplayResult:
        before = describe_input(last_input, rec.records[last_input]) if last_input >= 0 \
            else "no input"
        res.divergence = Divergence(index, now, what, compact(expected), compact(got), before)
        res.last_now = now
        return res

    for i, r in enumerate(rec.records):
        tag = r[0]
        if answer is not None:
            op_index, task, sock, result = answer
            answer = None
            if tag == REPLY:
                if result is None:
                    return diverge(i, f"reply to input #{op_index}", r[1],
                                   "no reply (the step sleeps)")
                got = recorded_result(encode_result(result))
                want = recorded_result(r[1]) if isinstance(r[1], dict) else r[1]
                if got != want and normalised(got) != want:
                    return diverge(i, f"reply to input #{op_index}", want, got)
                res.replies += 1
                deliver(i, task, sock, result)
                continue
            if result is not None:
                return diverge(i, f"reply to input #{op_index}", "no reply (the step sleeps)",
                               encode_result(result))
        if tag in INPUTS:
            now = r[1]
            last_input = i
            res.inputs += 1
            if tag == SEG:
                segments += r[5] if len(r) > 5 else 1
            try:
                answer = _apply(stack, i, r)
            except Exception as exc:  # the model failed on this input: so did the process?
                res.raised = (i, repr(exc))
                break
        elif tag == OUT:
            dones, n, diff = _compare_outputs(stack, r)
            if diff is not None:
                return diverge(i, *diff)
            for d in dones:
                deliver(i, d.task, d.sock_id, d.result)
            res.outputs += n
        elif tag == SNAP:
            snap_now, recorded = r[1], r[2]
            want = _current_names({k: v for k, v in recorded.items()
                                   if k not in SHELL_COUNTERS})
            got_counters = normalised({**model_counters(stack, snap_now),
                                       "segments": segments})
            want_flat, got_flat = flatten(want), flatten(got_counters)
            cdiff = first_difference(want_flat, got_flat)
            if cdiff is not None:
                return diverge(i, f"counter {cdiff[0]} (snapshot at t={snap_now} ns)",
                               cdiff[1], cdiff[2])
            res.snapshots += 1
            res.counters_compared = len(want_flat)
            res.last_snapshot = want
        elif tag == REPLY:
            return diverge(i, "a reply with no step before it", r[1], None)
        elif tag != END:
            return diverge(i, "record", "a known record", f"tag {tag!r}")
    res.last_now = now
    return res


def _current_names(counters: dict[str, Any]) -> dict[str, Any]:
    """Recorded counters under today's MIB and drop reason names (an older run's)."""
    if isinstance(counters.get("mib"), dict):
        counters["mib"] = current_counters(counters["mib"])
    if isinstance(counters.get("drops"), dict):
        counters["drops"] = current_drops(counters["drops"])
    return counters


def snapshot_json(counters: Mapping[str, Any]) -> dict[str, Any]:
    """Counters as counters.json holds them (JSON's view of the msgpack'd values)."""
    model = {k: v for k, v in counters.items() if k not in SHELL_COUNTERS}
    return dict(json.loads(json.dumps(model, default=str)))
