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
from actors.stack.net import DROP_REASONS, Event, OpDone, Transmit
from actors.stack.sock import TcpState
from actors.stack.tcp_ipv4 import OpError, Stack, sock_info
from cli.config import Scenario
from protocol import messages as msg
from protocol.envelope import Envelope
from protocol.wire import MalformedPacket, decode_ipv4, decode_tcp, encode, tcp_checksum_ok

NIC = "nic"


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

    # --- softirq ----------------------------------------------------------------------
    @handles(msg.RCV_BATCH)
    def on_rcv_batch(self, env: Envelope, now: int) -> None:
        self.work.append((env.sender, env.body["batch"], deque(env.body["frames"])))

    def next_deadline(self) -> int | None:
        if self.work:
            return 0  # due now: one segment per loop turn
        return self.stack.next_deadline()

    def on_timer(self, now: int) -> None:
        if self.work:
            cpu, batch, frames = self.work[0]
            if frames:
                self._tcp_v4_rcv(frames.popleft(), now)
            if not frames:
                self.work.popleft()
                self.send(cpu, msg.RCV_DONE, {"batch": batch})
        deadline = self.stack.next_deadline()
        if deadline is not None and deadline <= now:
            self.stack.run_timers(now)
        self._flush()

    def _tcp_v4_rcv(self, frame: bytes, now: int) -> None:
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
        try:
            result = self.stack.do_op(task, body["sock"], op, body["args"], now)
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

    def _flush(self) -> None:
        frames = []
        for out in self.stack.take_outputs():
            if isinstance(out, Transmit):
                frames.append(encode(out.segment))
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
        }
