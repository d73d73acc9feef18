"""The wire capture: a valid pcap that tshark reads, agreeing with the run's counters."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from actors.scenario import ImpairmentsConfig
from cli.config import load_scenario
from cli.run import run_scenario
from protocol.pcap import PcapWriter, read_pcap
from protocol.segment import Segment, TcpFlags
from protocol.wire import encode


def test_writer_round_trip(tmp_path: Path) -> None:
    seg = Segment(src="10.0.0.1", sport=1, dst="10.0.0.2", dport=2, seq=7, flags=TcpFlags.SYN)
    w = PcapWriter(tmp_path / "x.pcap", buffer_frames=2)
    frames = [encode(seg), encode(seg.with_(seq=8, payload=b"abc"))]
    for i, f in enumerate(frames):
        w.write(f, 1_700_000_000_000_000_000 + i * 1000)
    w.close()
    got = read_pcap(tmp_path / "x.pcap")
    assert [f for _, f in got] == frames
    assert got[1][0] - got[0][0] == 1


def test_a_burst_shares_one_stamp_and_long_frames_are_cut_at_the_snaplen(
        tmp_path: Path) -> None:
    seg = Segment(src="10.0.0.1", sport=1, dst="10.0.0.2", dport=2, seq=7, flags=TcpFlags.ACK)
    frames = [encode(seg.with_(payload=bytes([i]) * (i + 1))) for i in range(5)]
    w = PcapWriter(tmp_path / "x.pcap", buffer_frames=2)
    w.write_many(frames, 1_700_000_000_123_456_789)
    w.write_many([b"\x45" * 70_000], 1_700_000_001_000_000_000)
    w.close()
    got = read_pcap(tmp_path / "x.pcap")
    assert w.frames == 6 and [f for _, f in got[:5]] == frames
    assert {t for t, _ in got[:5]} == {1_700_000_000_123_456}
    assert len(got[5][1]) == 65535
    raw = (tmp_path / "x.pcap").read_bytes()
    assert int.from_bytes(raw[-65535 - 4:-65535], "little") == 70_000  # original length


def tshark(pcap: Path, *args: str) -> list[str]:
    exe = shutil.which("tshark")
    assert exe, "tshark is missing: run docker/install-host-deps.sh (the README's command does)"
    out = subprocess.run([exe, "-r", str(pcap), *args], capture_output=True, text=True,
                         timeout=120, check=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_tshark_reads_the_capture_and_agrees_with_the_counters(tmp_path: Path) -> None:
    sc = load_scenario(None)
    sc = replace(sc, flows=tuple(replace(f, bytes=600_000) for f in sc.flows),
                 impairments=ImpairmentsConfig(loss=0.01, duplicate=0.01, reorder=0.02,
                                               corrupt=0.01))
    summary = run_scenario(sc, tmp_path / "run", progress=False)
    assert summary["integrity"]
    pcap = tmp_path / "run" / "wire.pcap"
    nstat = summary["nstat"]
    nic = summary["nic"]
    # Every frame the stack sent is on the wire, from the listening port.
    acks = tshark(pcap, "-Y", "tcp.srcport == 5001", "-T", "fields", "-e", "frame.number")
    assert len(acks) == nic["tx_packets"] == nstat["TcpOutSegs"]
    # Frames corrupted on the wire are the ones the receiver rejected by checksum.
    bad = tshark(pcap, "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
                 "-Y", "tcp.checksum.status == 0 || ip.checksum.status == 0",
                 "-T", "fields", "-e", "frame.number")
    rejected = nstat.get("TcpInCsumErrors", 0) + nstat.get("IpInHdrErrors", 0) \
        + nstat.get("IpExtInCsumErrors", 0)
    assert len(bad) == rejected > 0
    # tshark's TCP analysis sees the sender's retransmissions and our duplicate ACKs. (It
    # cannot flag a retransmission whose original was lost before the capture point.)
    retrans = tshark(pcap, "-Y", "tcp.analysis.retransmission || tcp.analysis.fast_retransmission"
                     " || tcp.analysis.spurious_retransmission")
    sent_again = sum(f["sender"]["segments_retransmitted"] for f in summary["flows"])
    assert sent_again > 0 and len(retrans) > 0
    dupacks = tshark(pcap, "-Y", "tcp.analysis.duplicate_ack && tcp.srcport == 5001")
    assert dupacks
