"""Each role's process shell, for real: the cpu, nic and peer actors run as their own
processes, driven by messages from the launcher; their neighbours are relays that hand
back what the shell sent them. What crosses the sockets, the counters the shell reports
and its survival of bad input are checked, so a shell that bypasses its model (or drops
what the model says) shows here."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from actors.nic.model import Nic
from actors.runtime.launcher import Launcher
from actors.runtime.supervisor import PEER_EVENT
from actors.scenario import FlowConfig, ImpairmentsConfig, ReaderConfig, Scenario
from cli.run import build_topology
from protocol import messages as msg
from protocol.envelope import Envelope
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import seq_add
from protocol.wire import decode, encode
from tests.shell_roles import RELAY_CLASS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

WAIT_S = 15.0  # how long any one expected message may take on a busy 2-core host
MS = 1_000_000




def scenario(**changes: Any) -> Scenario:
    sc = Scenario(flows=(FlowConfig(name="f1", bytes=100_000, sport=40001),
                         FlowConfig(name="f2", bytes=100_000, sport=40002, reader="r2")),
                  readers=(ReaderConfig(name="r1", flow="f1"),
                           ReaderConfig(name="r2", flow="f2")))
    return replace(sc, **changes)


def topology(sc: Scenario, real: str, relays: dict[str, list[str]]) -> dict[str, Any]:
    """The scenario's topology with only ``real`` and relays standing in for its
    neighbours (each relaying the listed kinds)."""
    topo = build_topology(sc)
    actors = {real: topo["actors"][real]}
    for name, kinds in relays.items():
        actors[name] = {"role": "relay", "class": RELAY_CLASS, "config": {"kinds": kinds}}
    return {**topo, "actors": actors}


class Inbox:
    """What the launcher received, searchable by sender and kind."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.seen: list[Envelope] = []

    def take(self, sender: str, kind: str, where: Callable[[Envelope], bool] = lambda e: True,
             timeout_s: float = WAIT_S) -> Envelope:
        deadline = time.monotonic() + timeout_s
        while True:
            for i, env in enumerate(self.seen):
                if env.sender == sender and env.kind == kind and where(env):
                    return self.seen.pop(i)
            assert not self.launcher.exited(), f"an actor exited: {self.launcher.exited()}"
            left = deadline - time.monotonic()
            assert left > 0, f"no {kind} from {sender} within {timeout_s} s"
            self.seen += self.launcher.poll(timeout_ms=max(1, min(100, int(left * 1000))))

    def none(self, sender: str, kind: str, quiet_s: float) -> None:
        """Nothing of ``kind`` from ``sender`` for ``quiet_s`` (after everything expected
        has been seen, so a late extra message is caught)."""
        deadline = time.monotonic() + quiet_s
        while (left := deadline - time.monotonic()) > 0:
            self.seen += self.launcher.poll(timeout_ms=max(1, int(left * 1000)))
        assert not [e for e in self.seen if e.sender == sender and e.kind == kind]


def role_stats(launcher: Launcher, name: str) -> dict[str, Any]:
    stats = launcher.request_stats([name], timeout_s=WAIT_S)
    assert name in stats, f"{name} did not answer a stats request"
    return stats[name]


def rejected(stats: dict[str, Any]) -> dict[str, int]:
    return stats["transport"].get("rejected_messages", {})


def data_frame(sc: Scenario, n: int, flow: str = "f1") -> bytes:
    src, sport, dst, dport = sc.four_tuple(flow)
    return encode(Segment(src, sport, dst, dport, seq=n, flags=TcpFlags.ACK,
                          payload=n.to_bytes(4, "big")))


def carrying(frame: bytes) -> Callable[[Envelope], bool]:
    return lambda env: frame in env.body["frames"]


def for_queue(queue: int) -> Callable[[Envelope], bool]:
    return lambda env: bool(env.body["queue"] == queue)


# -- cpu --------------------------------------------------------------------------------------


def test_cpu_runs_ip_rcv_hands_the_rest_to_the_stack_and_survives_bad_dma(
        run_dir: Path) -> None:
    sc = scenario()
    topo = topology(sc, "cpu0", {"nic": [msg.REFILL, msg.UNMASK], "stack": [msg.RCV_BATCH]})
    good = [data_frame(sc, i) for i in range(3)]
    bad_csum = bytearray(data_frame(sc, 9))
    bad_csum[10] ^= 0xFF  # the IP header checksum
    with Launcher(topo, run_dir, ready_timeout_s=60) as launcher:
        inbox = Inbox(launcher)
        # cpu0 owns queue 0 only; queue 1 is cpu1's: a DMA or IRQ for it is malformed here.
        launcher.send("cpu0", msg.DMA, {"queue": 1, "frames": [good[0]]})
        launcher.send("cpu0", msg.IRQ, {"queue": 7})
        launcher.send("cpu0", msg.DMA, {"queue": 0,
                                        "frames": [good[0], bytes(bad_csum), good[1], good[2]]})
        launcher.send("cpu0", msg.IRQ, {"queue": 0})
        batch = inbox.take("stack", msg.RCV_BATCH)
        assert batch.body["frames"] == good
        # The softirq waits for the stack: a wrong batch number changes nothing.
        launcher.send("cpu0", msg.RCV_DONE, {"batch": batch.body["batch"] + 1})
        launcher.send("cpu0", msg.RCV_DONE, {"batch": batch.body["batch"]})
        refill = inbox.take("nic", msg.REFILL)
        assert refill.body == {"queue": 0, "n": 4}
        assert inbox.take("nic", msg.UNMASK).body == {"queue": 0}
        stats = role_stats(launcher, "cpu0")
        role = stats["role"]
        assert rejected(stats).get("rejected_by_handler") == 2
        assert role["ip_drops"] == {"IP_CSUM": 1}
        assert role["mib"]["IpInReceives"] == 4 and role["mib"]["IpInDelivers"] == 3
        assert role["mib"]["IpExtInCsumErrors"] == 1 and role["mib"]["IpInHdrErrors"] == 1
        assert (role["frames_in"], role["frames_to_stack"], role["stale_rcv_done"]) == (4, 3, 1)
        assert role["softnet_stat"][0] == 4 and role["irqs"] == 1
        inbox.none("stack", msg.RCV_BATCH, 0.2)
        # The stack dies holding the next batch: its frames are given up, the ring is
        # refilled and the queue unmasked as after any poll.
        launcher.send("cpu0", msg.DMA, {"queue": 0, "frames": good[:2]})
        launcher.send("cpu0", msg.IRQ, {"queue": 0})
        assert inbox.take("stack", msg.RCV_BATCH).body["frames"] == good[:2]
        launcher.send("cpu0", PEER_EVENT, {"actor": "stack", "role": "stack",
                                           "event": "exited", "incarnation": 0})
        assert inbox.take("nic", msg.REFILL).body == {"queue": 0, "n": 2}
        assert inbox.take("nic", msg.UNMASK).body == {"queue": 0}
        assert role_stats(launcher, "cpu0")["role"]["frames_abandoned"] == 2
        assert not launcher.exited()


# -- nic --------------------------------------------------------------------------------------


def test_nic_dmas_to_the_rss_queue_raises_its_irq_transmits_and_survives_bad_refills(
        run_dir: Path) -> None:
    sc = scenario()
    topo = topology(sc, "nic", {"cpu0": [msg.DMA, msg.IRQ], "cpu1": [msg.DMA, msg.IRQ],
                                "peer": [msg.WIRE]})
    model = Nic(sc.nic.queues, sc.nic.ring_size, rss_key=sc.nic.rss_key,
                queue_to_cpu=sc.queue_to_cpu)
    frames = [data_frame(sc, 1, "f1"), data_frame(sc, 2, "f2")]
    queues = [model.rss_queue(f) for f in frames]
    with Launcher(topo, run_dir, ready_timeout_s=60) as launcher:
        inbox = Inbox(launcher)
        launcher.send("nic", msg.REFILL, {"queue": 99, "n": 1})
        launcher.send("nic", msg.REFILL, {"queue": 0, "n": -5})
        launcher.send("nic", msg.UNMASK, {"queue": -1})
        launcher.send("nic", msg.WIRE, {"frames": frames})
        for frame, queue in zip(frames, queues, strict=True):
            cpu = f"cpu{sc.queue_to_cpu[queue]}"
            dma = inbox.take(cpu, msg.DMA, carrying(frame))
            assert dma.body["queue"] == queue
            assert inbox.take(cpu, msg.IRQ, for_queue(queue))
        ack = encode(Segment(*sc.four_tuple("f1")[2:], *sc.four_tuple("f1")[:2], seq=5,
                             flags=TcpFlags.ACK))
        launcher.send("nic", msg.TX, {"frames": [ack]})
        assert inbox.take("peer", msg.WIRE).body["frames"] == [ack]
        stats = role_stats(launcher, "nic")
        eth = stats["role"]["ethtool"]
        assert rejected(stats).get("rejected_by_handler") == 3
        assert (eth["rx_packets"], eth["tx_packets"], eth["rx_missed_errors"]) == (2, 1, 0)
        assert stats["role"]["pcap_frames"] == 3
        assert not launcher.exited()


# -- peer -------------------------------------------------------------------------------------


def test_peer_sends_what_is_due_when_it_is_due_and_answers_a_syn_ack(run_dir: Path) -> None:
    delay_ms = 40
    sc = scenario(impairments=ImpairmentsConfig(delay_ms=delay_ms))
    topo = topology(sc, "peer", {"nic": [msg.WIRE]})
    with Launcher(topo, run_dir, ready_timeout_s=60) as launcher:
        inbox = Inbox(launcher)
        syns: dict[int, Segment] = {}
        while len(syns) < 2:
            env = inbox.take("nic", msg.WIRE)
            # The wire delays every frame: nothing reaches the NIC before the delay.
            assert launcher.t0_ns is not None and env.ts_ns >= launcher.t0_ns + delay_ms * MS
            for f in env.body["frames"]:
                seg = decode(f)
                assert seg.flags == TcpFlags.SYN
                syns[seg.sport] = seg
        syn = syns[40001]
        assert syn.options.timestamp is not None
        synack = Segment(syn.dst, syn.dport, syn.src, syn.sport, seq=77, ack=seq_add(syn.seq, 1),
                         flags=TcpFlags.SYN | TcpFlags.ACK, window=65535,
                         options=TcpOptions(mss=1460, wscale=7, sack_permitted=True,
                                            timestamp=(1, syn.options.timestamp[0])))
        sent_at = time.monotonic_ns()
        launcher.send("peer", msg.WIRE, {"frames": [b"\x45garbage", encode(synack)]})
        got: list[Segment] = []
        while len(got) < 11:  # the handshake's ACK, then the initial window of 10
            env = inbox.take("nic", msg.WIRE)
            assert env.ts_ns >= sent_at + delay_ms * MS
            got += [decode(f) for f in env.body["frames"]]
        assert got[0].payload == b"" and got[0].ack == 78
        assert all(len(g.payload) == 1448 and g.sport == 40001 for g in got[1:])
        stats = role_stats(launcher, "peer")["role"]
        assert stats["peer"]["bad_frames"] == 1 and stats["peer"]["frames_in"] == 2
        assert stats["flows"]["f1"]["state"] == 1  # ESTABLISHED
        assert stats["flows"]["f2"]["state"] == 2  # SYN_SENT: nobody answered it
        assert not launcher.exited()
