"""The NIC process: RSS, descriptor rings with credits, DMA to the cpus, coalesced IRQs, TX."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from actors.nic.model import Dma, Nic, NicOutput, RaiseIrq
from actors.runtime.actor import Actor, ActorSettings, handles
from actors.runtime.costs import spend
from cli.config import Scenario
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

    def _out(self, outputs: list[NicOutput]) -> None:
        # DMA writes go first, then the interrupts: one socket per cpu keeps that order.
        dma: dict[tuple[int, int], list[bytes]] = defaultdict(list)
        irqs: list[RaiseIrq] = []
        for o in outputs:
            if isinstance(o, Dma):
                dma[(o.cpu, o.queue)].append(o.frame)
            elif isinstance(o, RaiseIrq):
                irqs.append(o)
        for (cpu, queue), frames in dma.items():
            self.send(cpu_name(cpu), msg.DMA, {"queue": queue, "frames": frames})
        for irq in irqs:
            self.send(cpu_name(irq.cpu), msg.IRQ, {"queue": irq.queue})

    @handles(msg.WIRE)
    def on_wire(self, env: Envelope, now: int) -> None:
        out: list[NicOutput] = []
        wall = time.time_ns()
        for frame in env.body["frames"]:
            self.pcap.write(frame, wall)
            spend(self.cost_ns)
            out += self.nic.rx_frame(frame, now)
        self._out(out)

    @handles(msg.REFILL)
    def on_refill(self, env: Envelope, now: int) -> None:
        self._out(self.nic.refill(env.body["queue"], env.body["n"], now))

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
        self.send(PEER, msg.WIRE, {"frames": frames})

    def next_deadline(self) -> int | None:
        return self.nic.next_deadline()

    def on_timer(self, now: int) -> None:
        self._out(self.nic.on_timer(now))

    def on_stop(self, now: int) -> None:
        self.pcap.close()

    def counters(self) -> dict[str, Any]:
        self.pcap.flush()
        return {"ethtool": self.nic.ethtool_stats(), "pcap_frames": self.pcap.frames}
