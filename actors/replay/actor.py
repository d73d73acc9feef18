"""The replay process: the nic's ``wire_peer`` when the scenario replays a capture.

It sends each flow's captured inbound frames to the nic at their recorded times after
``start`` (frames due together in one ``wire`` message), and reads the nic's ``wire``
messages (the stack's segments) only to learn each flow's SYN-ACK, which the rewriting
needs (:mod:`actors.replay.model`). A flow's frames after its SYN wait for that SYN-ACK;
if it comes after they were due, the rest of the flow goes that much later, its
recorded spacing kept (released at once, they would arrive as one burst the capture
never had).
"""

from __future__ import annotations

from typing import Any

from actors.replay import scenario_plan
from actors.replay.model import FIN, SYN, FlowReplay, parse
from actors.runtime.actor import Actor, ActorSettings, handles
from actors.scenario import Scenario
from protocol import messages as msg
from protocol.envelope import Envelope
from protocol.seq import seq_add

NIC = "nic"
BURST = 64  # frames per wire message at most (a NAPI poll's worth)


class ReplayActor(Actor):
    role = "replay"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        sc = Scenario.from_dict(self.config["scenario"])
        self.plan = scenario_plan(sc)
        self.flows = [FlowReplay(fp) for fp in self.plan.flows]
        # The stack's segments go to the peer's side: (dst, dport) -> flow index.
        self.by_port = {(f.target.src, f.target.sport): i for i, f in enumerate(self.flows)}
        n = len(self.flows)
        self.next = [0] * n                        # per flow: its next frame
        self.shift = [0] * n                       # per flow: ns it runs late by
        self.waiting: list[int | None] = [None] * n  # due time of a frame held for the SYN-ACK
        self.base: int | None = None
        self.c = {"stack_segments": 0, "stack_other": 0, "late_ns_max": 0}
        self.done = False

    def _due(self, i: int) -> int | None:
        frames = self.plan.flows[i].frames
        if self.base is None or self.next[i] >= len(frames) or self.waiting[i] is not None:
            return None
        return self.base + frames[self.next[i]][0] + self.shift[i]

    def on_start(self, now: int) -> None:
        self.base = now

    def next_deadline(self) -> int | None:
        dues = [d for d in map(self._due, range(len(self.flows))) if d is not None]
        return min(dues) if dues else None

    def on_timer(self, now: int) -> None:
        batch: list[tuple[int, int, bytes]] = []
        for i, flow in enumerate(self.flows):
            while (due := self._due(i)) is not None and due <= now:
                packet = self.plan.flows[i].frames[self.next[i]][1]
                if flow.waits(packet):
                    self.waiting[i] = due
                    break
                corrupt = self.next[i] in self.plan.flows[i].corrupt
                self.next[i] += 1
                batch.append((due, i, flow.outgoing(packet, corrupt)))
        batch.sort(key=lambda x: (x[0], x[1]))  # the capture's order across flows
        self._send([out for _, _, out in batch])
        self._report_done()

    def _send(self, frames: list[bytes]) -> None:
        for i in range(0, len(frames), BURST):
            self.send(NIC, msg.WIRE, {"frames": frames[i:i + BURST]})

    @handles(msg.WIRE)
    def on_wire(self, env: Envelope, now: int) -> None:
        for frame in env.body["frames"]:
            p = parse(bytes(frame))
            i = None if isinstance(p, str) else self.by_port.get((p.tuple4[2], p.tuple4[3]))
            if i is None or isinstance(p, str):
                self.c["stack_other"] += 1
                continue
            self.c["stack_segments"] += 1
            seg_len = len(p.payload) + (1 if p.flags & SYN else 0) + (p.flags & FIN)
            learned = self.flows[i].on_stack_segment(p.flags, p.seq, seq_add(p.seq, seg_len),
                                                     p.tsval)
            held_since = self.waiting[i]
            if learned and held_since is not None:
                # Every frame of the flow due by now waited for this SYN-ACK.
                frames, k = self.plan.flows[i].frames, self.next[i]
                late = max(0, now - held_since)
                while k < len(frames) and self.base is not None and \
                        self.base + frames[k][0] + self.shift[i] <= now:
                    k += 1
                self.flows[i].c["held"] += k - self.next[i]
                self.shift[i] += late
                self.waiting[i] = None
                self.c["late_ns_max"] = max(self.c["late_ns_max"], late)
        due = self.next_deadline()
        if due is not None and due <= now:
            self.on_timer(now)  # the held frames go now

    def _report_done(self) -> None:
        if (not self.done and self.base is not None
                and all(n >= len(fp.frames) for n, fp in zip(self.next, self.plan.flows,
                                                            strict=True))):
            self.done = True
            self.notify("info", "replay_done", sent=sum(f.c["sent"] for f in self.flows))

    def counters(self) -> dict[str, Any]:
        totals = {k: sum(f.c[k] for f in self.flows)
                  for k in ("sent", "held", "rewritten", "ack_clamped")}
        flows = {}
        for i, f in enumerate(self.flows):
            src, sport, dst, dport = f.plan.capture_tuple
            flows[f.target.name] = {**f.c, "capture_tuple": f"{src}:{sport} > {dst}:{dport}",
                                    "established": f.established,
                                    "stream_bytes": len(f.plan.stream),
                                    "sha256": f.plan.sha256, "holes": f.plan.holes,
                                    "fin": f.plan.fin, "late_ms": round(self.shift[i] / 1e6, 3)}
        pending = sum(len(fp.frames) - n for fp, n in zip(self.plan.flows, self.next,
                                                              strict=True))
        return {**self.plan.counts, **totals, **self.c, "connections": self.plan.connections,
                "pending": pending, "flows": flows}
