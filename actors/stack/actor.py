"""The stack process: every socket, driven by softirq batches, readers' steps and timers.

Each message handled is one critical section under ``sk_lock.slock``. A batch from a
cpu is worked through one segment per loop turn, so a reader's request that arrives
meanwhile is served between two segments and lock ownership can change mid-batch,
as it can in Linux.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from actors.runtime.actor import Actor, ActorSettings, handles
from actors.runtime.costs import cost_ns, spend
from actors.runtime.trace import (
    HOP_END,
    HOP_PROCESS_CONTEXT,
    HOP_SOURCE,
    HOP_TCP_V4_RCV,
    ORIGIN_STACK,
    FlowIds,
    is_flow_id,
    json_str,
)
from actors.stack.net import DROP_REASONS, MERGED, Event, OpDone, Transmit
from actors.stack.sock import TcpSock, TcpState
from actors.stack.tcp_ipv4 import OpError, Stack, sock_info
from actors.scenario import Scenario
from protocol import messages as msg
from protocol.envelope import Envelope
from protocol.wire import MalformedPacket, decode_ipv4, decode_tcp, encode, tcp_checksum_ok

NIC = "nic"
# Steps that replay the backlog or the prequeue on behalf of the calling reader.
REPLAY_OPS = frozenset({"release_sock", "sk_wait_data", "flush_backlog", "prequeue_process",
                        "close", "task_exit"})
OP_SLICE_NAMES = {"prequeue_process": "tcp_prequeue_process",
                  "flush_backlog": "__sk_flush_backlog", "recv_copy": "skb_copy_datagram_msg"}


# Counter series of a socket, "<track>/<unit>" (see _trace_sock).
SOCK_SERIES = ("backlog/segments", "backlog/bytes", "prequeue/segments", "receive queue/bytes",
               "rmem_alloc/bytes", "ofo queue/segments", "advertised window/bytes")
_SOCK_VALUES = "{{" + ",".join(f'"{name}":{{}}' for name in SOCK_SERIES) + "}}"
# Where tcp_v4_rcv put a segment, by the model event that says so.
SEGMENT_GOES_TO = {"backlog_add": "backlog", "prequeue_add": "prequeue",
                   "ofo_queue": "ofo_queue", "direct_copy": "direct_copy"}


class _FateLog(dict[int, str]):
    """``net.fates`` that also remembers each new fate, so a trace slice can end the
    flows of the segments whose fate was decided while it ran."""

    def __init__(self, fresh: list[tuple[int, str]]) -> None:
        super().__init__()
        self.fresh = fresh

    def __setitem__(self, key: int, value: str) -> None:
        super().__setitem__(key, value)
        self.fresh.append((key, value))


class StackActor(Actor):
    role = "stack"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        sc = Scenario.from_dict(self.config["scenario"])
        self.scenario = sc
        self.stack = Stack(sc.kernel_profile, sc.sysctl, seed=sc.seed_for("stack"),
                           emit_events=True)
        st = sc.stack
        self.listener = self.stack.listen(
            st.address, st.listen_port, self.clock(), rcvbuf=st.rcvbuf or None,
            rcvlowat=st.rcvlowat)
        self.cost = (st.cost_per_segment_us, st.cost_per_byte_ns)
        self.work: deque[tuple[str, int, deque[bytes]]] = deque()
        self.pending: dict[str, int] = {}  # task -> request_id of its sleeping step
        self.flow_waiters: dict[int, list[tuple[str, int]]] = {}  # sport -> (task, request)
        self.claimed: dict[int, int] = {}  # sport -> sock id
        self.malformed = 0
        self.segments = 0
        self.task_exits = 0
        self.locks_released_by_exit = 0  # a reader died owning the socket lock
        # Tracing: ids of each batch's frames (keyed by the frames deque), new fates, and
        # the ids given to segments we transmit (keyed by their Transmit output).
        self.batch_ids: dict[int, deque[int]] = {}
        self.fresh_fates: list[tuple[int, str]] = []
        self.tx_ids: dict[int, int] = {}
        self.flow_ids = FlowIds(ORIGIN_STACK, settings.incarnation)
        self.flow_of_port = {sc.four_tuple(f.name)[1]: f.name for f in sc.flows}
        self.sock_samples: dict[int, tuple[int, ...]] = {}
        self.flow_json = {port: json_str(name) for port, name in self.flow_of_port.items()}
        self.flag_letters: dict[int, str] = {}
        self.task_json: dict[str, str] = {}
        if self.trace.on:
            self.stack.net.fates = _FateLog(self.fresh_fates)

    # --- softirq ----------------------------------------------------------------------
    @handles(msg.RCV_BATCH)
    def on_rcv_batch(self, env: Envelope, now: int) -> None:
        frames = deque(env.body["frames"])
        self.work.append((env.sender, env.body["batch"], frames))
        ids = env.body.get("ids")
        if ids is not None and self.trace.on:
            self.batch_ids[id(frames)] = deque(ids)

    def next_deadline(self) -> int | None:
        if self.work:
            return 0  # due now: one segment per loop turn
        return self.stack.next_deadline()

    def on_timer(self, now: int) -> None:
        if self.work:
            cpu, batch, frames = self.work[0]
            if frames:
                ids = self.batch_ids.get(id(frames))
                self._tcp_v4_rcv(frames.popleft(), now, ids.popleft() if ids else None)
            if not frames:
                self.batch_ids.pop(id(frames), None)
                self.work.popleft()
                if not cpu.endswith("#gone"):
                    self.send(cpu, msg.RCV_DONE, {"batch": batch})
        deadline = self.stack.next_deadline()
        if deadline is not None and deadline <= now:
            if self.trace.on:
                t, n0 = self.clock(), len(self.stack.net.outputs)
                self.stack.run_timers(now)
                self._trace_timers(t, n0)
            else:
                self.stack.run_timers(now)
        self._flush()

    def _tcp_v4_rcv(self, frame: bytes, now: int, fid: int | None = None) -> None:
        self.segments += 1
        try:
            pkt = decode_ipv4(frame)
            seg = decode_tcp(pkt, verify_checksum=False)
        except MalformedPacket as err:
            self.malformed += 1
            self.stack.net.mib.add("TcpInSegs")
            for name in err.counters:
                self.stack.net.mib.add(name)
            self.log.warning("malformed_segment", reason=err.drop_reason, detail=str(err))
            return
        spend(cost_ns(*self.cost, len(seg.payload)))
        hdr = (pkt.l4[12] >> 4) * 4 if len(pkt.l4) > 12 else 20
        if self.trace.on:
            n0 = len(self.stack.net.outputs)
            traced = fid if is_flow_id(fid) else None
            self.stack.tcp_v4_rcv(seg, now, seg_id=traced, csum_ok=tcp_checksum_ok(pkt),
                                  hdr_len=hdr)
            self._trace_segment(seg, traced, now, n0)
        else:
            self.stack.tcp_v4_rcv(seg, now, csum_ok=tcp_checksum_ok(pkt), hdr_len=hdr)
        if self.flow_waiters:
            self._serve_flow_waiters()

    # --- readers ----------------------------------------------------------------------
    @handles(msg.SOCK_OP)
    def on_sock_op(self, env: Envelope, now: int) -> None:
        body = env.body
        task, rid, op = env.sender, body["request_id"], body["op"]
        if op == "connect_flow":
            sport = int(body["args"]["sport"])
            self.flow_waiters.setdefault(sport, []).append((task, rid))
            self._serve_flow_waiters()
            self._flush()
            return
        traced = self._trace_op_begin(body["sock"], op) if self.trace.on else None
        try:
            result = self.stack.do_op(task, body["sock"], op, body["args"], now)
            if traced is not None:
                self._trace_op_end(task, op, body["sock"], now, *traced)
        except (OpError, KeyError, TypeError, ValueError) as err:
            self.log.warning("bad_sock_op", task=task, op=op, error=str(err))
            self.send(task, msg.SOCK_OP_DONE,
                      {"request_id": rid, "result": {"error_msg": str(err)}})
            self._flush()
            return
        if result is None:
            self.pending[task] = rid
        else:
            self.send(task, msg.SOCK_OP_DONE, {"request_id": rid, "result": result})
        self._flush()

    def _serve_flow_waiters(self) -> None:
        """Hand each reader the connection of its flow once the handshake is done."""
        lsk = self.stack.socks[self.listener]
        for sport in list(self.flow_waiters):
            sock = self.claimed.get(sport)
            if sock is None:
                for sid in list(lsk.accept_queue):
                    sk = self.stack.socks[sid]
                    if sk.rport == sport:
                        lsk.accept_queue.remove(sid)  # accept()
                        self.claimed[sport] = sock = sid
                        break
            if sock is None:
                continue
            for task, rid in self.flow_waiters.pop(sport):
                self.send(task, msg.SOCK_OP_DONE, {"request_id": rid, "result": {"sock": sock}})

    # --- supervision ------------------------------------------------------------------
    def on_peer_event(self, actor: str, role: str, event: str, now: int) -> None:
        if role == "reader":
            self._task_exit(actor, now)
        elif role == "cpu":
            # Batches of a dead cpu are still host memory already handed over: finish
            # them, but nobody waits for their rcv_done.
            self.work = deque((actor + "#gone" if c == actor else c, b, f)
                              for c, b, f in self.work)

    def _task_exit(self, task: str, now: int) -> None:
        """A reader process died: as do_exit() closes its files, its socket lock,
        prequeue installation and waits go (the backlog is processed on release)."""
        self.pending.pop(task, None)
        for sport, waiters in list(self.flow_waiters.items()):
            waiters[:] = [(t, r) for t, r in waiters if t != task]
            if not waiters:
                del self.flow_waiters[sport]
        released = 0
        for sid in set(self.claimed.values()):
            sk = self.stack.socks.get(sid)
            if sk is None:
                continue
            released += sk.owner == task
            self.stack.do_op(task, sid, "task_exit", {}, now)
        self.task_exits += 1
        self.locks_released_by_exit += released
        self.log.warning("task_exit", task=task, released_lock=released)
        self._flush()

    def _flush(self) -> None:
        frames = []
        tx_ids: list[int] = []
        for out in self.stack.take_outputs():
            if isinstance(out, Transmit):
                frames.append(encode(out.segment))
                tx_ids.append(self.tx_ids.pop(id(out), -1))
            elif isinstance(out, OpDone):
                rid = self.pending.pop(out.task, None)
                if rid is not None:
                    self.send(out.task, msg.SOCK_OP_DONE, {"request_id": rid, "result": out.result})
            elif isinstance(out, Event) and out.name == "drop":
                reason = str(out.fields["reason"])
                self.log.info("drop", reason="SKB_DROP_REASON_" + reason, sock=out.sock_id,
                              counter=DROP_REASONS.get(reason), seq=out.fields.get("seq"),
                              end_seq=out.fields.get("end_seq"))
        if frames:
            if self.trace.on:
                self.send(NIC, msg.TX, {"frames": frames, "ids": tx_ids})
            else:
                self.send(NIC, msg.TX, {"frames": frames})

    def counters(self) -> dict[str, Any]:
        net = self.stack.net
        socks = [sock_info(sk) for sk in self.stack.socks.values()
                 if sk.state not in (TcpState.LISTEN,)]
        return {
            "mib": dict(net.mib.nonzero()),
            "drops": dict(net.drop_counts),
            "sockets": socks,
            "segments": self.segments,
            "malformed": self.malformed,
            "batches_waiting": len(self.work),
            "frames_waiting": sum(len(f) for _, _, f in self.work),
            "task_exits": self.task_exits,
            "locks_released_by_exit": self.locks_released_by_exit,
            "backlog_enqueued": self.stack.backlog_enqueued,
            "lock_waits": self.stack.lock_waits,
        }

    # --- tracing ------------------------------------------------------------------------
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
        fresh.clear()
        return ended

    def _tx_id(self, out: Transmit) -> int:
        """A flow id for a segment the model queued for transmit (sent by _flush)."""
        fid = self.flow_ids.next_id()
        self.tx_ids[id(out)] = fid
        return fid

    def _tx_sources(self, n0: int) -> list[int]:
        """A flow id for every segment the model queued for transmit since output ``n0``."""
        return [self._tx_id(out) for out in self.stack.net.outputs[n0:]
                if type(out) is Transmit]

    def _trace_sock(self, sk: TcpSock, t: int) -> None:
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

    def _trace_segment(self, seg: Any, fid: int | None, start: int, n0: int) -> None:
        """The tcp_v4_rcv slice of one segment, with where it went and the ACKs it caused."""
        end = self.clock()
        ended = self._take_fates()
        where = "receive_queue" if seg.payload else "consumed"
        tx: list[int] = []
        for out in self.stack.net.outputs[n0:]:
            kind = type(out)
            if kind is Event:
                name = out.name
                if name == "drop":
                    where = "drop:" + str(out.fields.get("reason"))
                else:
                    where = SEGMENT_GOES_TO.get(name, where)
            elif kind is Transmit:
                tx.append(self._tx_id(out))
        sid = self.stack.ehash.get(seg.four_tuple)
        sk = self.stack.socks.get(sid) if sid is not None else None
        flags = int(seg.flags)
        letters = self.flag_letters.get(flags)
        if letters is None:
            letters = self.flag_letters[flags] = seg.flags.short()
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
        flows: list[str] = []
        if fid is not None and fid not in ended:
            flows.append(f"[{HOP_TCP_V4_RCV},[{fid}]]")
        if ended:
            flows.append(f"[{HOP_END},[{','.join(map(str, ended))}]]")
        if tx:
            flows.append(f"[{HOP_SOURCE},[{','.join(map(str, tx))}]]")
        fl = f"[{','.join(flows)}]" if flows else "null"
        self.trace.line(f'["X",{start},{end - start},"softirq","tcp_v4_rcv",{args}}},{fl},null]')
        if sk is not None:
            self._trace_sock(sk, end)

    def _trace_timers(self, start: int, n0: int) -> None:
        end = self.clock()
        ended = self._take_fates()
        tx = self._tx_sources(n0)
        flows = [[HOP_END, ended]] if ended else []
        if tx:
            flows.append([HOP_SOURCE, tx])
        self.trace.complete("tcp timers", start, end, "softirq",
                            args={"acks_sent": len(tx)}, flows=flows)
        for sk in self.stack.socks.values():
            if sk.state != TcpState.LISTEN:
                self._trace_sock(sk, end)

    def _trace_op_begin(self, sock_id: int, op: str) -> tuple[int, list[int], list[int]]:
        """Before a reader's step: which segments wait in the backlog and the prequeue."""
        self.fresh_fates.clear()
        backlog: list[int] = []
        prequeue: list[int] = []
        sk = self.stack.socks.get(sock_id)
        if sk is not None and op in REPLAY_OPS:
            for skb in sk.backlog:
                backlog.extend(skb.ids)
            for skb in sk.ucopy.prequeue:
                prequeue.extend(skb.ids)
        return len(self.stack.net.outputs), backlog, prequeue

    def _trace_op_end(self, task: str, op: str, sock_id: int, start: int, n0: int,
                      backlog: list[int], prequeue: list[int]) -> None:
        """A reader's step, on the reader's own track: the kernel work done on its behalf
        (backlog and prequeue processing, copies, ACKs it sends), with the flows of the
        segments it moved on or delivered."""
        end = self.clock()
        if len(self.stack.net.outputs) == n0 and not self.fresh_fates:
            # Nothing happened that a queue, the window or the lock would show (the model
            # emits an event or a segment for each): a plain slice is the whole record.
            self.trace.line(f'["X",{start},{end - start},"main","{OP_SLICE_NAMES.get(op, op)}",'
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
        name = OP_SLICE_NAMES.get(op, op)
        if not (from_backlog or from_prequeue or ended or tx):
            # Most steps move no segment: a plain slice, formatted by hand (do_op accepted
            # the op, so its name is one of ours; the task is an actor name).
            self.trace.line(f'["X",{start},{end - start},"main","{name}",null,null,'
                            f'{self._task_json(task)}]')
        else:
            self._trace_op_flows(task, op, name, start, end, tx, moved, ended,
                                 len(from_backlog), len(from_prequeue))
        self._trace_lock_events(n0, start, end)
        if sk is not None:
            self._trace_sock(sk, end)

    def _task_json(self, task: str) -> str:
        text = self.task_json.get(task)
        if text is None:
            text = self.task_json[task] = json_str(task)
        return text

    def _trace_op_flows(self, task: str, op: str, name: str, start: int, end: int,
                        tx: list[int], moved: list[int], ended: list[int], backlog: int,
                        prequeue: int) -> None:
        if backlog and op != "flush_backlog":
            name = "__release_sock (backlog)"
        elif prequeue:
            name = "tcp_prequeue_process"
        args = {"op": op, "backlog_segments": backlog, "prequeue_segments": prequeue,
                "segments_done": len(ended)}
        flows: list[list[Any]] = []
        if tx:  # ACKs and window updates sent from the reader's context
            flows.append([HOP_SOURCE, tx])
        if moved:
            flows.append([HOP_PROCESS_CONTEXT, moved])
        if ended:
            flows.append([HOP_END, ended])
        self.trace.complete(name, start, end, "main", args=args, flows=flows, pid=task)

    def _trace_lock_events(self, n0: int, start: int, end: int) -> None:
        """sk_lock.owned as slices named after the owner; waits for it per waiting task."""
        unlocked = False
        tr = self.trace
        for out in self.stack.net.outputs[n0:]:
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
