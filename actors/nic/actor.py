"""The NIC process: RSS, descriptor rings with credits, DMA to the cpus, coalesced IRQs, TX."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from actors.nic.model import Dma, Nic, NicOutput, RaiseIrq, RxDrop
from actors.runtime.actor import Actor, ActorSettings, handles
from actors.runtime.costs import spend
from actors.runtime.trace import HOP_END, HOP_NIC
from actors.scenario import Scenario
from protocol import messages as msg
from protocol.envelope import Envelope
from protocol.pcap import PcapWriter

PEER = "peer"


def cpu_name(i: int) -> str:
    return f"cpu{i}"


class NicActor(Actor):
    role = "nic"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        sc = Scenario.from_dict(self.config["scenario"])
        nc = sc.nic
        self.nic = Nic(nc.queues, nc.ring_size, rx_usecs=nc.rx_usecs, rx_frames=nc.rx_frames,
                       rss_key=nc.rss_key, queue_to_cpu=sc.queue_to_cpu)
        self.cost_ns = int(nc.cost_per_frame_us * 1000)
        # The wire as the NIC sees it, both directions (a restarted NIC starts a new file).
        suffix = f".{settings.incarnation}" if settings.incarnation else ""
        self.pcap = PcapWriter(settings.run_dir / f"wire{suffix}.pcap")
        self.cpu_resets = 0
        # Who is on the other end of the wire: the peer actor, or whoever the topology
        # names (``rxpath drill --pipeline`` plays the peer in the launcher).
        self.wire_peer = str(self.config.get("wire_peer", PEER))

    def _out(self, outputs: list[NicOutput], ids: list[int] | None = None) -> None:
        """Send the model's outputs; ``ids`` are the trace ids of its Dma outputs, in order."""
        # DMA writes go first, then the interrupts: one socket per cpu keeps that order.
        dma: dict[tuple[int, int], list[bytes]] = defaultdict(list)
        dma_ids: dict[tuple[int, int], list[int]] = defaultdict(list)
        irqs: list[RaiseIrq] = []
        n = 0
        for o in outputs:
            if isinstance(o, Dma):
                dma[(o.cpu, o.queue)].append(o.frame)
                if ids is not None:
                    dma_ids[(o.cpu, o.queue)].append(ids[n])
                n += 1
            elif isinstance(o, RaiseIrq):
                irqs.append(o)
        for (cpu, queue), frames in dma.items():
            body: dict[str, Any] = {"queue": queue, "frames": frames}
            if ids is not None:
                body["ids"] = dma_ids[(cpu, queue)]
            self.send(cpu_name(cpu), msg.DMA, body)
        for irq in irqs:
            self.send(cpu_name(irq.cpu), msg.IRQ, {"queue": irq.queue})

    @handles(msg.WIRE)
    def on_wire(self, env: Envelope, now: int) -> None:
        out: list[NicOutput] = []
        wall = time.time_ns()
        ids = env.body.get("ids") if self.trace.on else None
        if ids is not None:
            self._rx_traced(env.body["frames"], ids, wall, now)
            return
        for frame in env.body["frames"]:
            self.pcap.write(frame, wall)
            spend(self.cost_ns)
            out += self.nic.rx_frame(frame, now)
        self._out(out)

    def _rx_traced(self, frames: list[bytes], ids: list[int], wall: int, now: int) -> None:
        """on_wire, following each frame's trace id into its DMA (or its rx_missed drop)."""
        out: list[NicOutput] = []
        dma_ids: list[int] = []
        missed: list[int] = []
        for frame, fid in zip(frames, ids, strict=False):
            self.pcap.write(frame, wall)
            spend(self.cost_ns)
            res = self.nic.rx_frame(frame, now)
            for o in res:
                if isinstance(o, Dma):
                    dma_ids.append(fid)
                elif isinstance(o, RxDrop):
                    missed.append(fid)
            out += res
        self._out(out, dma_ids)
        self.trace.complete(
            "rx: DMA to ring", now, self.clock(), "rx",
            args={"frames": len(frames), "rx_missed": len(missed),
                  "irqs": sum(isinstance(o, RaiseIrq) for o in out)},
            flows=[[HOP_NIC, dma_ids], [HOP_END, missed]] if missed else [[HOP_NIC, dma_ids]])
        self._trace_rings(now)

    def _trace_rings(self, now: int) -> None:
        self.trace.counter("rx ring", now, {f"q{q.index}/descriptors in use":
                                            q.ring_size - q.credits for q in self.nic.queues})

    @handles(msg.REFILL)
    def on_refill(self, env: Envelope, now: int) -> None:
        self._out(self.nic.refill(env.body["queue"], env.body["n"], now))
        if self.trace.on:
            self._trace_rings(now)

    @handles(msg.UNMASK)
    def on_unmask(self, env: Envelope, now: int) -> None:
        self._out(self.nic.unmask(env.body["queue"], now))

    @handles(msg.TX)
    def on_tx(self, env: Envelope, now: int) -> None:
        frames = env.body["frames"]
        wall = time.time_ns()
        for frame in frames:
            self.pcap.write(frame, wall)
            self.nic.tx_frame(frame, now)
        ids = env.body.get("ids") if self.trace.on else None
        if ids is None:
            self.send(self.wire_peer, msg.WIRE, {"frames": frames})
            return
        self.send(self.wire_peer, msg.WIRE, {"frames": frames, "ids": ids})
        self.trace.complete("tx", now, self.clock(), "tx", args={"frames": len(frames)},
                            flows=[[HOP_NIC, ids]])

    def on_peer_event(self, actor: str, role: str, event: str, now: int) -> None:
        if role == "cpu" and event == "restarted" and actor.startswith("cpu"):
            # The host's rings were re-created empty and fully posted: all credits back.
            self.nic.reset_cpu(int(actor[3:]))
            self.cpu_resets += 1

    def next_deadline(self) -> int | None:
        return self.nic.next_deadline()

    def on_timer(self, now: int) -> None:
        self._out(self.nic.on_timer(now))

    def on_stop(self, now: int) -> None:
        self.pcap.close()

    def counters(self) -> dict[str, Any]:
        self.pcap.flush()
        return {"ethtool": self.nic.ethtool_stats(), "pcap_frames": self.pcap.frames,
                "cpu_resets": self.cpu_resets, "stale_refills": self.nic.stale_refills}
