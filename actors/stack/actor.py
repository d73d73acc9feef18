"""The stack process: decodes softirq batches, tasks' steps and supervisor events, runs
them through the stack model (:mod:`actors.stack.tcp_ipv4`), and sends what it returns.

Each message handled is one critical section under ``sk_lock.slock``. A batch from a
cpu is worked through segment by segment; before each next segment the shell looks
whether a message (a reader's step, above all) is waiting, and if so goes back to the
loop to serve it first, so lock ownership can change mid-batch, as it can in Linux.
The ACKs a run of segments causes leave in one TX message, as a driver's xmit_more
batches them.

Every input given to the model, with its ``now``, and every output taken from it go to
the run's stack input record (:mod:`actors.stack.record`), which ``rxpath replay``
runs through the same model; ``RXPATH_STACK_RECORD=0`` in the environment turns it off.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from actors.runtime.actor import EX_SOFTWARE, Actor, ActorSettings, RejectMessage, handles
from actors.runtime.costs import cost_ns, spend
from actors.runtime.trace import is_flow_id
from actors.scenario import Scenario
from actors.stack.net import Event, OpDone, Transmit
from actors.stack.record import (
    EXIT,
    OP,
    SEG,
    SNAP,
    TIMERS,
    build_stack,
    model_counters,
    open_record,
)
from actors.stack.trace_observer import StackTrace, log_event
from protocol import messages as msg
from protocol.envelope import Envelope, MalformedMessage
from protocol.sockops import Rejected, encode_result
from protocol.wire import encode

NIC = "nic"


@dataclass(frozen=True, slots=True)
class GsoFrame:
    """A queued frame that came with a GSO size (a tun write's virtio_net_hdr, or an skb
    NAPI GRO merged): frames without one stay plain bytes, so the common path carries
    nothing extra. ``wire``: the wire frames it stands for in the frame accounting (a
    GRO skb's segments; a tun write is one frame however many segments it holds). It
    holds the frame, not subclasses bytes, so up to 64 KB is never copied to make one."""

    frame: bytes
    gso_size: int
    wire: int = 1


class StackActor(Actor):
    role = "stack"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        sc = Scenario.from_dict(self.config["scenario"])
        self.stack = build_stack(sc)
        self.recorder = open_record(settings.run_dir, settings.name, settings.incarnation,
                                    self.config["scenario"], self.log)
        st = sc.stack
        if st.listen_port:
            now, rcvbuf = self.clock(), st.rcvbuf or None
            if self.recorder:
                self.recorder.listen(now, st.address, st.listen_port, st.listen_backlog,
                                     rcvbuf, st.rcvlowat)
            self.stack.listen(st.address, st.listen_port, now,
                              backlog=st.listen_backlog, rcvbuf=rcvbuf,
                              rcvlowat=st.rcvlowat)
        # Told how many frames went through tcp_v4_rcv after each run of them (the drill's
        # injector waits for its segment as a tun write would).
        self.rcv_watcher: str | None = self.config.get("rcv_watcher")
        # Each tun write runs the receive path in its own softirq section, after which
        # a timer that fell due (a 0 ns compressed SACK) runs before the next write's
        # segment: frames from a tun device get due timers run between them, where a
        # NAPI poll's frames do not.
        self.tun_writes = sc.nic.device == "tun"
        self._reported = 0
        self.cost = (st.cost_per_segment_us, st.cost_per_byte_ns)
        # Batches in hand: (cpu, batch id, frames, their trace ids or None).
        self.work: deque[tuple[str, int, deque[bytes | GsoFrame], deque[int] | None]] = \
            deque()
        self.pending: dict[str, int] = {}  # task -> request_id of its sleeping step
        self.segments = 0  # frames taken from batches
        self.observer = StackTrace(
            self.trace, self.clock, self.stack,
            {sc.four_tuple(f.name)[1]: f.name for f in sc.flows},
            settings.incarnation) if self.trace.on else None

    # --- softirq ----------------------------------------------------------------------
    @handles(msg.RCV_BATCH)
    def on_rcv_batch(self, env: Envelope, now: int) -> None:
        body = env.body
        ids, gso, frames = body.get("ids"), body.get("gso"), body["frames"]
        bad: MalformedMessage | None = None
        try:
            msg.check_gso(gso, len(frames))
            segs = body.get("segs")
            msg.check_segs(segs, gso, len(frames))
            if gso is not None:
                counts = segs if segs is not None else [1] * len(frames)
                frames = [GsoFrame(f, g, n) if g else f
                          for f, g, n in zip(frames, gso, counts, strict=True)]
        except MalformedMessage as exc:
            bad = exc
        try:
            msg.check_ids(ids, len(frames))
        except MalformedMessage as exc:
            bad, ids = bad or exc, None
        self.work.append((env.sender, env.body["batch"], deque(frames),
                          deque(ids) if ids is not None and self.observer else None))
        if bad is not None:
            # The frames are sound and their cpu waits for the batch's rcv_done: they go
            # up without GSO sizes / trace ids, and the list is rejected (counted, logged).
            raise RejectMessage(f"{bad}; frames taken without it")

    def next_deadline(self) -> int | None:
        if self.work:
            return 0  # due now: one segment per loop turn
        return self.stack.next_deadline()

    def on_timer(self, now: int) -> None:
        waiting = self.mailbox.input_waiting
        while self.work:
            cpu, batch, frames, ids = self.work[0]
            if frames:
                self._tcp_v4_rcv(frames.popleft(), now, ids.popleft() if ids else None)
            if not frames:
                self.work.popleft()
                if not cpu.endswith("#gone"):
                    self.send(cpu, msg.RCV_DONE, {"batch": batch})
            if waiting():
                break  # serve it between these two segments
            now = self.clock()
            if self.tun_writes and self.work:
                self._run_due_timers(now)
        self._run_due_timers(now)
        self._flush()
        if self.rcv_watcher is not None and self.segments != self._reported:
            self._reported = self.segments
            self.send(self.rcv_watcher, msg.RCV_PROGRESS, {"segments": self.segments})

    def _run_due_timers(self, now: int) -> None:
        deadline = self.stack.next_deadline()
        if deadline is not None and deadline <= now:
            self.timer_fired(deadline, now)  # also when segments kept the loop busy
            obs = self.observer
            t, n0 = (self.clock(), len(obs.outputs())) if obs else (0, 0)
            if self.recorder:
                self.recorder.pack((TIMERS, now))
            ran = self.stack.run_timers(now)
            if obs:
                obs.timers(t, n0, ran)

    def _tcp_v4_rcv(self, frame: bytes | GsoFrame, now: int, fid: int | None) -> None:
        obs = self.observer
        n0 = len(obs.outputs()) if obs else 0
        traced = fid if obs and is_flow_id(fid) else None
        rec = self.recorder
        if isinstance(frame, GsoFrame):
            self.segments += frame.wire
            if rec:
                rec.pack((SEG, now, frame.frame, traced, frame.gso_size) if frame.wire == 1
                         else (SEG, now, frame.frame, traced, frame.gso_size, frame.wire))
            seg = self.stack.tcp_v4_rcv_frame(frame.frame, now, seg_id=traced,
                                              gso_size=frame.gso_size, gro_segs=frame.wire)
        else:
            self.segments += 1
            if rec:
                rec.pack((SEG, now, frame) if traced is None else (SEG, now, frame, traced, 0))
            seg = self.stack.tcp_v4_rcv_frame(frame, now, seg_id=traced)
        if seg is None:
            return
        spend(cost_ns(*self.cost, len(seg.payload)))
        if obs:
            obs.segment(seg, traced, now, n0)

    # --- tasks ------------------------------------------------------------------------
    @handles(msg.SOCK_OP)
    def on_sock_op(self, env: Envelope, now: int) -> None:
        body = env.body
        task, rid = env.sender, body["request_id"]
        obs = self.observer
        if obs:
            obs.op_begin(body["op"], body["sock"])
        rec = self.recorder
        if rec:
            rec.pack((OP, now, task, body["op"], body["sock"], body["args"]))
        result = self.stack.sock_op_msg(task, body["op"], body["sock"], body["args"], now)
        if obs and not isinstance(result, Rejected):
            obs.op_end(task, body["op"], body["sock"], now)
        if result is None:
            self.pending[task] = rid
        else:
            encoded = encode_result(result)
            if rec:
                rec.reply(encoded)
            self._answer(task, rid, encoded)
        self._flush()

    def _answer(self, task: str, rid: int, result: dict[str, Any]) -> None:
        self.send(task, msg.SOCK_OP_DONE, {"request_id": rid, "result": result})

    # --- supervision ------------------------------------------------------------------
    def on_peer_event(self, actor: str, role: str, event: str, now: int) -> None:
        if role == "reader":
            self.pending.pop(actor, None)
            if self.recorder:
                self.recorder.pack((EXIT, now, actor))
            self.stack.task_exit(actor, now)
            self._flush()
        elif role == "cpu":
            # Batches of a dead cpu are still host memory already handed over: finish
            # them, but nobody waits for their rcv_done.
            self.work = deque((c + "#gone" if c == actor else c, b, f, i)
                              for c, b, f, i in self.work)

    def _flush(self) -> None:
        frames = []
        tx_ids: list[int] = []
        dones: list[OpDone] = []
        obs = self.observer
        for out in self.stack.take_outputs():
            if isinstance(out, Transmit):
                frames.append(encode(out.segment))
                if obs:
                    tx_ids.append(obs.tx_id(out))
            elif isinstance(out, OpDone):
                dones.append(out)
                rid = self.pending.pop(out.task, None)
                if rid is not None:
                    self._answer(out.task, rid, encode_result(out.result))
            elif isinstance(out, Event):
                log_event(self.log, out)
        rec = self.recorder
        if rec:
            if frames or dones:
                rec.outputs(frames, dones)
            rec.maybe_flush(self.clock())
        if frames:
            body: dict[str, Any] = {"frames": frames}
            if obs:
                body["ids"] = tx_ids
            self.send(NIC, msg.TX, body)

    def counters(self) -> dict[str, Any]:
        now = self.clock()
        out = {**model_counters(self.stack, now), "segments": self.segments,
               "batches_waiting": len(self.work),
               "frames_waiting": sum(getattr(f, "wire", 1) for w in self.work for f in w[2])}
        if self.recorder:
            # A heartbeat's snapshot also writes the record out: an idle stack that is
            # killed leaves it whole up to its last beat.
            self.recorder.pack((SNAP, now, out))
            self.recorder.flush()
        return out

    def run(self) -> int:
        code = EX_SOFTWARE  # what the runtime returns for an exception escaping it
        try:
            code = super().run()
        finally:
            if self.recorder:
                self.recorder.close(f"exit {code}")
        return code
