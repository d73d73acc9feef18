"""What the stack process records of its model: trace records and log lines.

:class:`StackTrace` turns the model's outputs (events, transmits, the fates of
segments) into trace records: the ``tcp_v4_rcv`` slice of each segment with where it
went, the timer runs, each task's step on the task's own track (named after the
kernel function it stands for, with the backlog or prequeue work done on its
behalf), the socket lock's owners and waiters, counter samples of each socket's
queues, each ACK's number and window edge, and instants for the SACK blocks sent and
every segment dropped (with its reason). :func:`log_event` writes the events worth a
log line. Neither decides anything: the model has done its work when they look.

Slices end at the process clock when the record is made, so a slice shows the real
time the work took in this process.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from actors.runtime.trace import (
    HOP_END,
    HOP_PROCESS_CONTEXT,
    HOP_SOURCE,
    HOP_TCP_V4_RCV,
    ORIGIN_STACK,
    FlowIds,
    TraceWriter,
    is_flow_id,
    json_str,
)
from actors.stack.net import (
    CONSUMED,
    DELIVERED,
    MERGED,
    Event,
    StackOutput,
    Transmit,
    drop_counters,
)
from actors.stack.sock import TcpSock, TcpState
from actors.stack.tcp_ipv4 import Stack
from protocol.segment import Segment, TcpFlags, flags_text
from protocol.sockops import (
    OPS,
    DoExit,
    ReleaseSock,
    SkFlushBacklog,
    SkWaitData,
    SockOp,
    TcpClose,
    TcpPrequeueProcess,
)

# Steps that replay the backlog or the prequeue on behalf of the calling task.
REPLAY_OPS: frozenset[type[SockOp]] = frozenset({
    ReleaseSock, SkWaitData, SkFlushBacklog, TcpPrequeueProcess, TcpClose, DoExit})

# Counter series of a socket, "<track>/<unit>" (see StackTrace.sock_sample).
SOCK_SERIES = ("backlog/segments", "backlog/bytes", "prequeue/segments", "receive queue/bytes",
               "rmem_alloc/bytes", "ofo queue/segments", "advertised window/bytes")
_SOCK_VALUES = "{{" + ",".join(f'"{name}":{{}}' for name in SOCK_SERIES) + "}}"
# Where tcp_v4_rcv put a segment, by the model event that says so.
SEGMENT_GOES_TO = {"backlog_add": "backlog", "prequeue_add": "prequeue",
                   "ofo_queue": "ofo_queue", "direct_copy": "direct_copy"}


def log_event(log: Any, out: Event) -> None:
    """A log line for the model events that deserve one."""
    name = out.name
    f = out.fields
    if name == "drop":
        reason = str(f["reason"])
        log.info("drop", reason="SKB_DROP_REASON_" + reason, sock=out.sock_id,
                 counter=_counter_arg(reason), seq=f.get("seq"), end_seq=f.get("end_seq"))
    elif name in ("malformed_segment", "bad_sock_op", "task_exit"):
        log.warning(name, **f)


def _counter_arg(reason: str, absent: frozenset[str] = frozenset()) -> str | None:
    """The counter(s) a drop's log line and trace instant name ("A or B" for a reason two
    drop sites share), None for none."""
    return " or ".join(drop_counters(reason, absent)) or None


class _FateLog(dict[int, str]):
    """``net.fates`` that also remembers each new fate, so a trace slice can end the
    flows of the segments whose fate was decided while it ran."""

    def __init__(self, fresh: list[tuple[int, str]]) -> None:
        super().__init__()
        self.fresh = fresh

    def __setitem__(self, key: int, value: str) -> None:
        super().__setitem__(key, value)
        self.fresh.append((key, value))


class StackTrace:
    """Records the stack model's work into ``trace`` (built only when tracing is on)."""

    def __init__(self, trace: TraceWriter, clock: Callable[[], int], stack: Stack,
                 flow_of_port: dict[int, str], incarnation: int) -> None:
        self.trace = trace
        self.clock = clock
        self.stack = stack
        self.fresh_fates: list[tuple[int, str]] = []
        self.fresh_drops: list[tuple[int, str]] = []  # (flow id, reason) not yet marked
        self.fate_notes: dict[str, str] = {}
        stack.net.fates = _FateLog(self.fresh_fates)
        # Flow ids given to the segments the model queued for transmit, by output.
        self.tx_ids: dict[int, int] = {}
        self.flow_ids = FlowIds(ORIGIN_STACK, incarnation)
        self.flow_of_port = flow_of_port
        self.flow_json = {port: json_str(name) for port, name in flow_of_port.items()}
        self.sock_samples: dict[int, tuple[int, ...]] = {}
        self.task_json: dict[str, str] = {}
        self._op: tuple[int, list[int], list[int]] | None = None

    # --- what the shell sends ------------------------------------------------------------

    def tx_id(self, out: Transmit) -> int:
        """The flow id of a transmitted segment (-1: none was given)."""
        return self.tx_ids.pop(id(out), -1)

    def _new_tx_id(self, out: Transmit) -> int:
        fid = self.flow_ids.next_id()
        self.tx_ids[id(out)] = fid
        self._ack_sample(out)
        return fid

    def _ack_sample(self, out: Transmit) -> None:
        """What an ACK tells the sender, as stream offsets (bytes after the SYN): the ACK
        number and the window's right edge (ack + scaled window) as a counter sample of
        the flow, and its SACK blocks, if any, as an instant. The time-sequence graph of
        ``rxpath report`` draws these lines."""
        seg = out.segment
        flags = seg.flags
        sk = self.stack.socks.get(out.sock_id) if out.sock_id is not None else None
        if sk is None or not flags & TcpFlags.ACK or flags & (TcpFlags.SYN | TcpFlags.RST):
            return
        t = self.clock()
        irs = sk.irs + 1
        ack = (seg.ack - irs) & 0xFFFFFFFF
        edge = ack + (seg.window << sk.rx_opt.rcv_wscale)
        name = self.flow_json.get(sk.rport) or f'"sock{sk.sock_id}"'
        self.trace.line(f'["C",{t},{name},{{"ACK/byte offset":{ack},'
                        f'"window edge/byte offset":{edge}}},null]')
        blocks = seg.options.sack_blocks
        if blocks:
            rel = [[(a - irs) & 0xFFFFFFFF, (b - irs) & 0xFFFFFFFF] for a, b in blocks]
            self.trace.line(f'["i",{t},"ACKs sent","SACK",{{"flow":{name},"ack":{ack},'
                            f'"blocks":{json.dumps(rel, separators=(",", ":"))}}},null]')

    def _drop_marks(self, n0: int, t: int) -> None:
        """An instant per segment dropped since output ``n0``, named after its reason:
        from the model's drop events (flow, offset, length), and from the fates for a drop
        no socket owned (no event says where it was)."""
        pending = self.fresh_drops
        evs = [out for out in self.outputs()[n0:] if isinstance(out, Event)
               and out.name == "drop"]
        if not pending and not evs:
            return
        covered: dict[str, int] = {}
        absent = self.stack.net.profile.absent_counters
        for out in evs:
            f = out.fields
            reason = str(f.get("reason"))
            covered[reason] = covered.get(reason, 0) + 1
            args: dict[str, Any] = {"reason": "SKB_DROP_REASON_" + reason,
                                    "counter": _counter_arg(reason, absent),
                                    "flow": self._sock_name(out.sock_id)}
            sk = self.stack.socks.get(out.sock_id) if out.sock_id is not None else None
            seq, end_seq = f.get("seq"), f.get("end_seq")
            if sk is not None and isinstance(seq, int) and isinstance(end_seq, int):
                args["offset"] = (seq - sk.irs - 1) & 0xFFFFFFFF
                args["len"] = (end_seq - seq) & 0xFFFFFFFF
            self.trace.instant("drop: " + reason, t, "drops", args=args)
        for fid, reason in pending:
            if covered.get(reason):
                covered[reason] -= 1
                continue
            self.trace.instant("drop: " + reason, t, "drops",
                               args={"reason": "SKB_DROP_REASON_" + reason,
                                     "counter": _counter_arg(reason, absent), "id": fid})
        pending.clear()

    def _tx_sources(self, n0: int) -> list[int]:
        """A flow id for every segment the model queued for transmit since output ``n0``."""
        return [self._new_tx_id(out) for out in self.outputs()[n0:] if type(out) is Transmit]

    def outputs(self) -> list[StackOutput]:
        return self.stack.net.outputs

    # --- helpers -----------------------------------------------------------------------

    def _sock_name(self, sock_id: int | None) -> str:
        sk = self.stack.socks.get(sock_id) if sock_id is not None else None
        if sk is None:
            return f"sock{sock_id}"
        return self.flow_of_port.get(sk.rport, f"sock{sock_id}")

    def _take_fates(self) -> list[int]:
        """Flow ids whose fate (delivered, consumed, dropped) was decided since last asked."""
        fresh = self.fresh_fates
        if not fresh:
            return []
        ended = [i for i, fate in fresh if fate != MERGED and is_flow_id(i)]
        # Drops and merges are few; the record names them so a segment's fate is known.
        for i, fate in fresh:
            if fate != DELIVERED and fate != CONSUMED and is_flow_id(i):
                self.fate_notes[str(i)] = fate
                if fate.startswith("drop:"):
                    self.fresh_drops.append((i, fate[5:]))
        fresh.clear()
        return ended

    def _fate_args(self) -> dict[str, str] | None:
        """The drop reasons and merges noted since the last record (its "fates" arg)."""
        notes = self.fate_notes
        if not notes:
            return None
        self.fate_notes = {}
        return notes

    def _task_json(self, task: str) -> str:
        text = self.task_json.get(task)
        if text is None:
            text = self.task_json[task] = json_str(task)
        return text

    def sock_sample(self, sk: TcpSock, t: int) -> None:
        """One counter sample of a socket's queues and window, when any of them changed.
        Series are "<track>/<unit>": the merger makes one counter track of each."""
        values = (len(sk.backlog), sk.backlog_len, len(sk.ucopy.prequeue),
                  (sk.rcv_nxt - sk.copied_seq) & 0xFFFFFFFF, sk.rmem_alloc, len(sk.ofo),
                  sk.rcv_wnd)
        if self.sock_samples.get(sk.sock_id) == values:
            return
        self.sock_samples[sk.sock_id] = values
        name = self.flow_json.get(sk.rport) or f'"sock{sk.sock_id}"'
        self.trace.line(f'["C",{t},{name},{_SOCK_VALUES.format(*values)},null]')

    # --- softirq -------------------------------------------------------------------------

    def segment(self, seg: Segment, fid: int | None, start: int, n0: int) -> None:
        """The tcp_v4_rcv slice of one segment, with where it went and the ACKs it caused."""
        end = self.clock()
        ended = self._take_fates()
        where = "receive_queue" if seg.payload else "consumed"
        tx: list[int] = []
        for out in self.outputs()[n0:]:
            kind = type(out)
            if kind is Event:
                assert isinstance(out, Event)
                name = out.name
                if name == "drop":
                    where = "drop:" + str(out.fields.get("reason"))
                else:
                    where = SEGMENT_GOES_TO.get(name, where)
            elif kind is Transmit:
                assert isinstance(out, Transmit)
                tx.append(self._new_tx_id(out))
        sid = self.stack.ehash.get(seg.four_tuple)
        sk = self.stack.socks.get(sid) if sid is not None else None
        letters = flags_text(seg.flags)
        # The hottest record of the run: formatted by hand (see TraceWriter.line). Every
        # string in it is a flow name (escaped once) or one of our own fixed words.
        args = f'{{"seq":{seg.seq},"len":{len(seg.payload)},"flags":"{letters}","to":"{where}"'
        if sk is not None:
            flow = self.flow_json.get(sk.rport) or f'"sock{sk.sock_id}"'
            args += f',"flow":{flow}'
            if seg.payload:
                args += f',"offset":{(seg.seq - sk.irs - 1) & 0xFFFFFFFF}'
        if tx:
            args += f',"acks_sent":{len(tx)}'
        if fid is not None:
            args += f',"id":{fid}'
        fates = self._fate_args()
        if fates:
            args += f',"fates":{json.dumps(fates, separators=(",", ":"))}'
        flows: list[str] = []
        if fid is not None and fid not in ended:
            flows.append(f"[{HOP_TCP_V4_RCV},[{fid}]]")
        if ended:
            flows.append(f"[{HOP_END},[{','.join(map(str, ended))}]]")
        if tx:
            flows.append(f"[{HOP_SOURCE},[{','.join(map(str, tx))}]]")
        fl = f"[{','.join(flows)}]" if flows else "null"
        self.trace.line(f'["X",{start},{end - start},"softirq","tcp_v4_rcv",{args}}},{fl},null]')
        if self.fresh_drops or where.startswith("drop:"):
            self._drop_marks(n0, end)
        if sk is not None:
            self.sock_sample(sk, end)

    def timers(self, start: int, n0: int, socks: list[TcpSock]) -> None:
        """The slice of a timer run; samples the sockets whose timers ran (``socks``)."""
        end = self.clock()
        ended = self._take_fates()
        tx = self._tx_sources(n0)
        flows = [[HOP_END, ended]] if ended else []
        if tx:
            flows.append([HOP_SOURCE, tx])
        args: dict[str, Any] = {"acks_sent": len(tx)}
        fates = self._fate_args()
        if fates:
            args["fates"] = fates
        self.trace.complete("tcp timers", start, end, "softirq", args=args, flows=flows)
        self._drop_marks(n0, end)
        for sk in socks:
            if sk.state != TcpState.LISTEN:
                self.sock_sample(sk, end)

    # --- a task's steps ------------------------------------------------------------------

    def op_begin(self, op_name: object, sock_id: object) -> None:
        """Before a task's step: which segments wait in the backlog and the prequeue."""
        self.fresh_fates.clear()
        backlog: list[int] = []
        prequeue: list[int] = []
        cls = OPS.get(op_name) if isinstance(op_name, str) else None
        sk = self.stack.socks.get(sock_id) if isinstance(sock_id, int) else None
        if sk is not None and cls in REPLAY_OPS:
            for skb in sk.backlog:
                backlog.extend(skb.ids)
            for skb in sk.ucopy.prequeue:
                prequeue.extend(skb.ids)
        self._op = (len(self.outputs()), backlog, prequeue)

    def op_end(self, task: str, op_name: str, sock_id: int, start: int) -> None:
        """A task's step, on the task's own track: the kernel work done on its behalf
        (backlog and prequeue processing, copies, ACKs it sends), with the flows of the
        segments it moved on or delivered."""
        assert self._op is not None
        n0, backlog, prequeue = self._op
        self._op = None
        cls = OPS[op_name]
        name = cls.kernel_name
        end = self.clock()
        if len(self.outputs()) == n0 and not self.fresh_fates:
            # Nothing happened that a queue, the window or the lock would show (the model
            # emits an event or a segment for each): a plain slice is the whole record.
            self.trace.line(f'["X",{start},{end - start},"main","{name}",'
                            f'null,null,{self._task_json(task)}]')
            return
        ended = self._take_fates()
        tx = self._tx_sources(n0)
        sk = self.stack.socks.get(sock_id)
        still: set[int] = set()
        if sk is not None and (backlog or prequeue):
            for skb in sk.backlog:
                still.update(skb.ids)
            for skb in sk.ucopy.prequeue:
                still.update(skb.ids)
        done = set(ended)
        from_backlog = [i for i in backlog if i not in still]
        from_prequeue = [i for i in prequeue if i not in still]
        moved = [i for i in from_backlog + from_prequeue if i not in done and is_flow_id(i)]
        if not (from_backlog or from_prequeue or ended or tx or self.fate_notes):
            # Most steps move no segment: a plain slice, formatted by hand (the name is a
            # kernel name of protocol.sockops; the task is an actor name).
            self.trace.line(f'["X",{start},{end - start},"main","{name}",null,null,'
                            f'{self._task_json(task)}]')
        else:
            self._op_flows(task, cls, name, start, end, tx, moved, ended,
                           len(from_backlog), len(from_prequeue))
        self._lock_events(n0, start, end)
        self._drop_marks(n0, end)
        if sk is not None:
            self.sock_sample(sk, end)

    def _op_flows(self, task: str, cls: type[SockOp], name: str, start: int, end: int,
                  tx: list[int], moved: list[int], ended: list[int], backlog: int,
                  prequeue: int) -> None:
        if backlog and cls is not SkFlushBacklog:
            name = "__release_sock (backlog)"
        elif prequeue:
            name = TcpPrequeueProcess.kernel_name
        args: dict[str, Any] = {"op": cls.kernel_name, "backlog_segments": backlog,
                                "prequeue_segments": prequeue, "segments_done": len(ended)}
        fates = self._fate_args()
        if fates:
            args["fates"] = fates
        flows: list[list[Any]] = []
        if tx:  # ACKs and window updates sent from the task's context
            flows.append([HOP_SOURCE, tx])
        if moved:
            flows.append([HOP_PROCESS_CONTEXT, moved])
        if ended:
            flows.append([HOP_END, ended])
        self.trace.complete(name, start, end, "main", args=args, flows=flows, pid=task)

    def _lock_events(self, n0: int, start: int, end: int) -> None:
        """sk_lock.owned as slices named after the owner; waits for it per waiting task."""
        unlocked = False
        tr = self.trace
        for out in self.outputs()[n0:]:
            if not isinstance(out, Event) or out.name not in ("lock", "unlock", "lock_wait"):
                continue
            sid = out.sock_id
            task = str(out.fields.get("task"))
            track = f"{self._sock_name(sid)} sk_lock"
            if out.name == "unlock":
                tr.end(("owner", sid), end)
                unlocked = True
            elif out.name == "lock":
                # Granted at the step's start, or (handed over by a release) at its end.
                t = end if unlocked else start
                tr.end(("wait", sid, task), t)
                tr.begin(("owner", sid), f"owned by {task}", t, track, args={"owner": task})
            else:
                tr.begin(("wait", sid, task),
                         f"{task} waits for sk_lock ({out.fields.get('owner')} owns it)",
                         start, f"{track} waiter {task}", args={"owner": out.fields.get("owner")})
