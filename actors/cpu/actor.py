"""A cpu process: hardirq, the NET_RX softirq (NAPI within budget and time), ip_rcv, and the
hand-off of each poll's frames to the stack, which keeps this softirq busy until it answers."""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

from actors.cpu.ip_rcv import ip_rcv
from actors.cpu.napi import Poll, Refill, Softirq, Unmask
from actors.mib import Mib
from actors.runtime.actor import Actor, ActorSettings, handles
from actors.runtime.costs import cost_ns, spend
from actors.runtime.trace import HOP_END, HOP_NAPI
from actors.scenario import Scenario
from protocol import messages as msg
from protocol.envelope import Envelope

NIC = "nic"
STACK = "stack"


class CpuActor(Actor):
    role = "cpu"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        sc = Scenario.from_dict(self.config["scenario"])
        self.profile = sc.kernel_profile
        queues = [q for q, c in enumerate(sc.queue_to_cpu) if c == self.instance]
        self.softirq = Softirq(self.instance, queues, sc.nic.ring_size, sc.sysctl,
                               rescan_poll_list=self.profile.net_rx_action_rescan)
        self.mib = Mib()
        self.local = frozenset({sc.stack.address})
        self.cost = (sc.cpu.cost_per_segment_us, sc.cpu.cost_per_byte_ns)
        # Batch ids of each incarnation are disjoint: an answer meant for our previous
        # life (the stack finishing its batch) can never match one of ours.
        self.batches = itertools.count(settings.incarnation * 1_000_000_000 + 1)
        self.frames_in = 0
        self.frames_to_stack = 0
        self.frames_abandoned = 0
        self.in_flight: tuple[int, Poll] | None = None
        self.ip_drops: dict[str, int] = {}
        # Trace ids of the frames in each ring, in ring order (mirrors Napi.ring).
        self.ring_ids: dict[int, deque[int]] = {q: deque() for q in queues}
        self._squeezes = 0

    @handles(msg.DMA)
    def on_dma(self, env: Envelope, now: int) -> None:
        queue = env.body["queue"]
        if self.trace.on:
            self._dma_traced(queue, env.body["frames"], env.body.get("ids"), now)
            return
        for frame in env.body["frames"]:
            self.frames_in += 1
            self.softirq.dma(queue, frame, now)

    def _dma_traced(self, queue: int, frames: list[bytes], ids: list[int] | None,
                    now: int) -> None:
        ring_ids = self.ring_ids[queue]
        overrun: list[int] = []
        for i, frame in enumerate(frames):
            self.frames_in += 1
            fid = ids[i] if ids is not None and i < len(ids) else -1
            if self.softirq.dma(queue, frame, now):
                ring_ids.append(fid)
            else:
                overrun.append(fid)
        if overrun:
            self.trace.complete("dma overrun", now, self.clock(), "cpu",
                                args={"queue": queue, "frames": len(overrun)},
                                flows=[[HOP_END, overrun]])
        self.trace.counter(f"ring q{queue}", now, {"frames to poll": self.softirq.ring_len(queue)})

    @handles(msg.IRQ)
    def on_irq(self, env: Envelope, now: int) -> None:
        self.softirq.hardirq(env.body["queue"], now)
        if self.trace.on:
            self.trace.complete("hardirq", now, self.clock(), "cpu",
                                args={"queue": env.body["queue"]})
        self._run(now)

    @handles(msg.RCV_DONE)
    def on_rcv_done(self, env: Envelope, now: int) -> None:
        if self.in_flight is None or self.in_flight[0] != env.body["batch"]:
            return  # a stale answer (the stack restarted meanwhile)
        poll = self.in_flight[1]
        self.in_flight = None
        self._finish(poll, now)
        self._run(now)

    def _finish(self, poll: Poll, now: int) -> None:
        outs = self.softirq.finish_poll(poll, now)
        for out in outs:
            if isinstance(out, Refill):
                self.send(NIC, msg.REFILL, {"queue": out.queue, "n": out.n})
            elif isinstance(out, Unmask):
                self.send(NIC, msg.UNMASK, {"queue": out.queue})
        if self.trace.on:
            t = self.clock()
            self.trace.end("napi_poll", t, args={
                "napi_complete_done": any(isinstance(o, Unmask) for o in outs)})
            if not self.softirq.in_run:
                squeezes = self.softirq.softnet.time_squeeze
                self.trace.end("net_rx_action", t,
                               args={"time_squeeze": squeezes > self._squeezes})
                self._squeezes = squeezes

    def _run(self, now: int) -> None:
        """net_rx_action: poll until a batch is with the stack or nothing is scheduled."""
        tracing = self.trace.on
        while self.in_flight is None and self.softirq.softirq_pending:
            t = self.clock()
            new_run = not self.softirq.in_run
            poll = self.softirq.start_poll(now)
            if poll is None:
                return
            ids: list[int] = []
            fwd_ids: list[int] = []
            dropped_ids: list[int] = []
            if tracing:
                ring_ids = self.ring_ids[poll.queue]
                ids = [ring_ids.popleft() if ring_ids else -1 for _ in poll.frames]
                if new_run:
                    self.trace.begin("net_rx_action", "net_rx_action", t, "cpu",
                                     args={"budget": self.softirq.netdev_budget})
                self.trace.begin("napi_poll", "napi_poll", t, "cpu", args={
                    "queue": poll.queue, "work": poll.work, "weight": poll.weight})
                self.trace.counter(f"ring q{poll.queue}", t,
                                   {"frames to poll": self.softirq.ring_len(poll.queue)})
            frames = []
            for i, frame in enumerate(poll.frames):
                spend(cost_ns(*self.cost, len(frame)))
                res = ip_rcv(frame, self.mib, self.local)
                if res.delivered:
                    frames.append(frame)
                    if tracing:
                        fwd_ids.append(ids[i])
                else:
                    reason = res.drop_reason or "IP"
                    self.ip_drops[reason] = self.ip_drops.get(reason, 0) + 1
                    if tracing:
                        dropped_ids.append(ids[i])
            if tracing:
                self.trace.add_flows("napi_poll", HOP_NAPI, fwd_ids)
                self.trace.add_flows("napi_poll", HOP_END, dropped_ids)
            if frames:
                batch = next(self.batches)
                self.in_flight = (batch, poll)
                self.frames_to_stack += len(frames)
                body: dict[str, Any] = {"batch": batch, "frames": frames}
                if tracing:
                    body["ids"] = fwd_ids
                self.send(STACK, msg.RCV_BATCH, body)
                return
            self._finish(poll, self.clock())

    def on_peer_event(self, actor: str, role: str, event: str, now: int) -> None:
        if role == "stack" and event == "exited" and self.in_flight is not None:
            # The stack died with our batch: it will never answer. Its frames are lost
            # (TCP retransmits them); the descriptors are refilled as after any poll.
            batch, poll = self.in_flight
            self.in_flight = None
            self.frames_abandoned += len(poll.frames)
            self.log.warning("batch_abandoned", batch=batch, frames=len(poll.frames))
            self._finish(poll, now)
            self._run(now)

    def next_deadline(self) -> int | None:
        return None

    def counters(self) -> dict[str, Any]:
        s = self.softirq
        return {
            "mib": dict(self.mib.nonzero()),
            "softnet_stat": s.softnet_stat(self.profile),
            "irqs": s.irqs, "polls": s.polls, "net_rx_action_runs": s.net_rx_action_runs,
            "repolls": s.repolls, "ip_drops": self.ip_drops,
            "frames_in": self.frames_in, "frames_to_stack": self.frames_to_stack,
            "frames_abandoned": self.frames_abandoned,
            "dma_overruns": s.dma_overruns, "frames_lost_in_reset": s.frames_lost_in_reset,
            "ring_frames": sum(len(n.ring) for n in s.napis.values()),
            "in_flight_frames": len(self.in_flight[1].frames) if self.in_flight else 0,
        }
