"""A real Linux TCP sender through the emulated receive path: a real network namespace,
a real TUN device, the host kernel's TCP (configs/linux-sender*.toml).

Skipped, saying why, when namespaces or TUN devices cannot be created here (not root,
no /dev/net/tun, no iproute2); otherwise every failure fails. After each run nothing may
remain: no namespace, no device, no process.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from actors.tunwire.netns import (
    TCP_INFO_LEN,
    TUN_DEVICE,
    delete_netns,
    ends_connection,
    format_sample,
    in_flight,
    last_views,
    netns_exists,
    parse_ss,
    parse_ss_samples,
    parse_tcp_info,
    setup_commands,
    whole_samples,
)
from cli import formats
from cli.config import load_scenario
from cli.linux_sender import sweep_stale, tunwire_config
from cli.main import app
from cli.report import print_summary, socket_lines
from cli.report_html import load_run, render
from cli.run import run_scenario

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
LEFTOVER_TIMEOUT_S = 10.0


def _why_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces and TUN devices"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed (docker/install-host-deps.sh installs it)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun does not exist"
    name = f"rxpath-probe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        probe = subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, "-c",
             "from actors.tunwire.netns import open_tun; open_tun('rxprobe0')"],
            capture_output=True, text=True, cwd=ROOT, timeout=30)
        if probe.returncode != 0:
            return f"cannot create a TUN device: {probe.stderr.strip()[-200:]}"
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    return None


_WHY = _why_unavailable()
# Only the tests that need a real namespace skip; the pure ones run anywhere.
REAL = pytest.mark.skipif(_WHY is not None, reason=f"real Linux sender: {_WHY}")


def _processes_mentioning(*needles: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmd for n in needles):
            found.append(f"{entry.name}: {cmd[:160]}")
    return found


def _leftovers(netns: str, run_dir: Path) -> list[str]:
    left = [f"namespace {netns}"] if netns_exists(netns) else []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    left += [f"device {TUN_DEVICE} in the host namespace"] if TUN_DEVICE in links else []
    return left + _processes_mentioning(str(run_dir), netns)


def _wait_nothing_left(netns: str, run_dir: Path, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = _leftovers(netns, run_dir)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)  # polling the system's state against a deadline


def _kill_leftovers(netns: str | None, run_dir: Path) -> None:
    for line in _processes_mentioning(str(run_dir), *([netns] if netns else [])):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
    if netns:
        delete_netns(netns)


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    rd = tmp_path / "run"
    yield rd
    netns_file = rd / "netns.txt"
    _kill_leftovers(netns_file.read_text().strip() if netns_file.exists() else None, rd)


def _run(config: str, run_dir: Path) -> dict:
    sc = load_scenario(CONFIGS / config)
    summary = run_scenario(sc, run_dir, progress=False)
    netns = summary["netns"]
    assert netns.startswith("rxpath-")
    left = _wait_nothing_left(netns, run_dir, LEFTOVER_TIMEOUT_S)
    assert left == [], f"left behind after the run: {left}"
    return summary


def _sender(summary: dict) -> dict:
    return summary["flows"][0]["sender"]


# -- pure parts -----------------------------------------------------------------------


def test_setup_routes_only_the_receiver_through_the_tun() -> None:
    cmds = setup_commands("rxtun0", "10.0.0.1", "10.0.0.2")
    assert ["ip", "route", "add", "10.0.0.2/32", "dev", "rxtun0", "src", "10.0.0.1"] in cmds
    assert ["ip", "addr", "add", "10.0.0.1/32", "dev", "rxtun0"] in cmds


def test_ss_lines_give_the_sender_side_view() -> None:
    text = ("ESTAB 0      129048 10.0.0.1:40001 10.0.0.2:5001\n"
            "\t cubic wscale:7,10 rto:232 rtt:29.377/0.017 mss:1448 cwnd:30 ssthresh:17 "
            "backoff:2 rwnd_limited:992ms(80.1%) retrans:0/5 bytes_retrans:7240\n")
    (sk,) = parse_ss(text)
    assert sk["sport"] == 40001 and sk["peer"] == "10.0.0.2:5001" and sk["send_q"] == 129048
    assert (sk["cwnd"], sk["ssthresh"], sk["retrans"], sk["backoff"]) == (30, 17, 5, 2)
    assert (sk["rtt_ms"], sk["rwnd_limited_ms"], sk["bytes_retrans"]) == (29.377, 992, 7240)
    assert "snd_wnd" not in sk  # ss leaves a zero snd_wnd out


# RUN_DIR/ss-sender.txt of a real run of configs/linux-sender.toml (4 of its 17 samples: the
# first, before the sender connected; one while sending; the one taken when the sender
# exited; the one at the stop), and the receiver's socket from that run's summary.json.
SS_SENDER_TXT = (
    "# t=0.249 s\n\n"
    "# t=0.349 s\n"
    "ESTAB 0      358144 10.0.0.1:40001 10.0.0.2:5001\n"
    "\t bbr wscale:7,10 rto:224 rtt:20.79/2.317 mss:1448 pmtu:1500 rcvmss:536 advmss:1448 "
    "cwnd:74 bytes_sent:321456 bytes_acked:231681 segs_out:224 segs_in:71 data_segs_out:222 "
    "bbr:(bw:32430912bps,mrtt:3.942,pacing_gain:2.88672,cwnd_gain:2.88672) send 41232131bps "
    "lastrcv:88 lastack:4 pacing_rate 92682736bps delivery_rate 32431520bps delivered:161 "
    "busy:88ms unacked:62 rcv_space:14480 rcv_ssthresh:64088 notsent:268368 minrtt:3.942 "
    "snd_wnd:188032\n\n"
    "# t=1.732 s\n"
    "FIN-WAIT-1 0      1      10.0.0.1:40001 10.0.0.2:5001\n"
    "\t bbr wscale:7,10 rto:232 rtt:30.822/9.067 mss:1448 pmtu:1500 rcvmss:536 advmss:1448 "
    "cwnd:140 ssthresh:34 bytes_sent:4000000 bytes_acked:4000001 segs_out:2766 segs_in:816 "
    "data_segs_out:2763 bbr:(bw:35747192bps,mrtt:3.942,pacing_gain:1,cwnd_gain:2) send "
    "52616962bps lastsnd:80 lastrcv:1472 lastack:52 pacing_rate 35389720bps delivery_rate "
    "32350952bps delivered:2764 busy:1468ms unacked:1 rcv_space:14480 rcv_ssthresh:64088 "
    "minrtt:3.942 snd_wnd:554880\n\n"
    "# t=1.746 s\n"
    "FIN-WAIT-1 0      1      10.0.0.1:40001 10.0.0.2:5001\n"
    "\t bbr wscale:7,10 rto:232 rtt:30.822/9.067 mss:1448 pmtu:1500 rcvmss:536 advmss:1448 "
    "cwnd:140 ssthresh:34 bytes_sent:4000000 bytes_acked:4000001 segs_out:2766 segs_in:816 "
    "data_segs_out:2763 bbr:(bw:35747192bps,mrtt:3.942,pacing_gain:1,cwnd_gain:2) send "
    "52616962bps lastsnd:208 lastrcv:1600 lastack:180 pacing_rate 35389720bps delivery_rate "
    "32350952bps delivered:2764 busy:1596ms unacked:1 rcv_space:14480 rcv_ssthresh:64088 "
    "minrtt:3.942 snd_wnd:554880\n\n")
RECEIVER_SOCK = {
    "sock": 2, "state": "CLOSE-WAIT", "local": "10.0.0.2:5001", "peer": "10.0.0.1:40001",
    "recv_q": 0, "send_q": 0, "skmem": {"r": 0, "rb": 1158080, "t": 0, "tb": 87040, "f": 0,
                                        "w": 0, "o": 0, "bl": 0, "d": 0},
    "rcv_wnd": 554880, "rcv_wscale": 7, "snd_wscale": 10, "rcv_ssthresh": 562208,
    "rcv_mss": 1448, "advmss": 1460, "ato_ms": 40.0, "rcv_rtt_ms": 27.635,
    "rcv_space": 196928, "segs_in": 2765, "data_segs_in": 2763, "snd_mss": 1448,
    "snd_wnd": 64512, "last_data_recv_ms": 72, "bytes_received": 4000001}


def test_ss_samples_of_the_sender_side() -> None:
    samples = parse_ss_samples(SS_SENDER_TXT)
    assert [t for t, _ in samples] == [0.249, 0.349, 1.732, 1.746]
    assert [len(s) for _, s in samples] == [0, 1, 1, 1]
    sending = samples[1][1][0]
    assert (sending["state"], sending["recv_q"], sending["send_q"]) == ("ESTAB", 0, 358144)
    assert (sending["cwnd"], sending["unacked"], sending["rtt_ms"], sending["rttvar_ms"]) == (
        74, 62, 20.79, 2.317)
    assert "ssthresh" not in sending  # no loss yet: ss leaves it out
    assert sending["line"] == "ESTAB 0      358144 10.0.0.1:40001 10.0.0.2:5001"
    assert sending["info"].startswith("bbr wscale:7,10 rto:224 ")
    assert in_flight(sending) == 62
    assert in_flight({"unacked": 30, "sacked": 5, "lost": 3, "retrans_out": 2}) == 24
    views = last_views(samples)
    (key, last), = views.items()
    assert key == ("10.0.0.1:40001", "10.0.0.2:5001")
    assert (last["t_s"], last["samples"], last["state"]) == (1.746, 3, "FIN-WAIT-1")
    # A file still being written: only whole samples (the blank line ss never prints).
    text = SS_SENDER_TXT.encode()
    cut = text[:text.index(b"FIN-WAIT-1") + 20]
    assert whole_samples(cut) == text[:text.index(b"# t=1.732")]
    assert whole_samples(b"# t=0.1 s\nESTAB 0") == b""
    assert format_sample(0.5, "ESTAB x") == "# t=0.500 s\nESTAB x\n\n"


def test_a_timewait_socket_does_not_hide_the_last_tcp_info() -> None:
    # ss shows an orphaned FIN-WAIT-2 as a timewait socket: a tab, no fields (as recorded
    # in a run of configs/linux-sender-slow-reader.toml).
    later = (SS_SENDER_TXT
             + "# t=4.289 s\nFIN-WAIT-2 0      0      10.0.0.1:40001 10.0.0.2:5001\n\t\n\n")
    samples = parse_ss_samples(later)
    assert samples[-1][1][0]["info"] == ""
    (view,) = last_views(samples).values()
    assert (view["state"], view["t_s"], view["samples"]) == ("FIN-WAIT-1", 1.746, 4)
    assert (view["then_state"], view["then_t_s"]) == ("FIN-WAIT-2", 4.289)
    assert "cwnd:140" in view["info"]
    lines = formats.ss_flow_lines([RECEIVER_SOCK], {"f1": view}, "rxpath-x")
    assert lines[5] == ("f1: sender, the host kernel in netns rxpath-x (ss -tin at 1.746 s; "
                        "at 4.289 s ss shows it FIN-WAIT-2, with no tcp_info)")


@pytest.mark.parametrize(("flags", "ends"), [
    (0x02, False), (0x10, False), (0x18, False), (0x11, True), (0x14, True), (0x04, True)],
    ids=["SYN", "ACK", "PSH-ACK", "FIN-ACK", "RST-ACK", "RST"])
def test_a_fin_or_rst_from_the_sender_is_noticed(flags: int, ends: bool) -> None:
    # The tunwire samples ss when one goes by, before forwarding it (see its on_timer).
    for ihl in (5, 8):  # with IP options, the TCP header starts later
        ip = bytes([0x40 | ihl]) + bytes(ihl * 4 - 1)
        tcp = bytearray(20)
        tcp[13] = flags
        assert ends_connection(ip + bytes(tcp)) is ends
    assert ends_connection(bytes([0x45]) + bytes(25)) is False  # too short to hold flags


def _sender_run_dir(tmp_path: Path, *, view_in_summary: bool) -> Path:
    """A run dir as a linux-sender run leaves it: summary.json (with or without the
    sender's last ss view, as a run made before the summary kept it), scenario.json and
    ss-sender.txt (the recorded sample)."""
    rd = tmp_path / ("new" if view_in_summary else "old")
    rd.mkdir()
    last = last_views(parse_ss_samples(SS_SENDER_TXT))[("10.0.0.1:40001", "10.0.0.2:5001")]
    sender = {"kind": "builtin", "cwnd": 140, "ssthresh": 34, "max_cwnd": 140,
              "snd_wnd": 554880, "rtt_ms": 30.822, "segments_retransmitted": 0,
              "bytes_retrans": 0, "rwnd_limited_ms": 0.0, "max_backoff": 0,
              "zero_window_samples": 0}
    if view_in_summary:
        sender["ss"] = {k: last[k] for k in ("t_s", "samples", "state", "recv_q", "send_q",
                                             "local", "peer", "line", "info")}
    summary = {"profile": "legacy", "seed": 1, "reason": "complete", "elapsed_s": 3.4,
               "netns": "rxpath-9bbb44e0", "nstat": {"TcpInSegs": 2765}, "sockets":
               [RECEIVER_SOCK], "flows": [{"flow": "f1", "bytes": 4_000_000,
                                           "received": 4_000_000, "bad_chunks": 0, "eof": True,
                                           "readers": ["r1"], "sender": sender,
                                           "verdict": "intact", "intact": True}],
               "verdict": {"state": "PASS", "why": "every flow delivered exactly"}}
    (rd / "summary.json").write_text(json.dumps(summary))
    (rd / "scenario.json").write_text(json.dumps({
        "peer": {"address": "10.0.0.1"}, "stack": {"address": "10.0.0.2", "listen_port": 5001},
        "flows": [{"name": "f1", "bytes": 4_000_000, "sport": 40001}]}))
    (rd / "ss-sender.txt").write_text(SS_SENDER_TXT)
    return rd


@pytest.mark.parametrize("view_in_summary", [True, False], ids=["summary", "ss-sender.txt"])
def test_rxpath_ss_shows_both_ends_of_each_flow(tmp_path: Path, view_in_summary: bool) -> None:
    rd = _sender_run_dir(tmp_path, view_in_summary=view_in_summary)
    res = CliRunner().invoke(app, ["ss", str(rd)])
    assert res.exit_code == 0, res.output
    out = res.output.splitlines()
    assert out[0] == "f1: 10.0.0.1:40001 -> 10.0.0.2:5001"
    # the receiver, as ss -tmi prints it
    assert out[1].startswith("f1: receiver, rxpath's emulated stack (ss -tmi")
    assert out[2] == "State      Recv-Q Send-Q Local Address:Port Peer Address:Port Process"
    assert out[3] == "CLOSE-WAIT 0      0           10.0.0.2:5001     10.0.0.1:40001"
    assert out[4].startswith("\t skmem:(r0,rb1158080,t0,tb87040,f0,w0,o0,bl0,d0) wscale:10,7 ")
    # the sender, its last sample as ss -tin printed it, laid out as ss lays it out
    assert out[5] == ("f1: sender, the host kernel in netns rxpath-9bbb44e0 (ss -tin at "
                      "1.746 s, the last of 3 samples)")
    assert out[6] == "State      Recv-Q Send-Q Local Address:Port  Peer Address:PortProcess"
    assert out[7] == "FIN-WAIT-1 0      1           10.0.0.1:40001     10.0.0.2:5001"
    assert out[8] == "\t " + SS_SENDER_TXT.split("\n\t ")[-1].split("\n")[0]
    # and side by side, under each tool's own names
    assert out[9] == "f1: side by side"
    rows = {ln.split()[0]: ln for ln in out[10:] if ln.strip()}
    assert rows["receiver"].split() == ["receiver", "(rxpath)", "sender", "(Linux)"]
    assert rows["state"].split() == ["state", "CLOSE-WAIT", "FIN-WAIT-1"]
    assert rows["window"].split() == ["window", "rcv_wnd:554880", "rcv_space:196928",
                                      "rcv_ssthresh:562208", "snd_wnd:554880"]
    assert rows["bytes"].split() == ["bytes", "bytes_received:4000001", "bytes_sent:4000000",
                                     "bytes_acked:4000001"]
    assert rows["congestion"].split() == ["congestion", "-", "cwnd:140", "ssthresh:34",
                                          "unacked:1"]
    assert rows["wscale"].split() == ["wscale", "wscale:10,7", "wscale:7,10"]
    res = CliRunner().invoke(app, ["ss", str(rd), "--json"])
    (sk,) = json.loads(res.output)
    assert sk["linux_sender"]["flow"] == "f1" and sk["linux_sender"]["state"] == "FIN-WAIT-1"


def test_ss_without_a_real_sender_is_plain_ss_tmi() -> None:
    lines = socket_lines({"sockets": [RECEIVER_SOCK], "flows": [{"flow": "f1"}]})
    assert lines[0] == "State      Recv-Q Send-Q Local Address:Port Peer Address:Port Process"
    assert len(lines) == 3 and lines[2].startswith("\t skmem:")


def test_the_summary_and_the_report_show_the_sender_side(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rd = _sender_run_dir(tmp_path, view_in_summary=True)
    s = json.loads((rd / "summary.json").read_text())
    print_summary(s)
    printed = capsys.readouterr().out
    # the same lines as rxpath ss, then the #sender table
    assert "\n".join(socket_lines(s, rd)) in printed
    assert "f1: sender, the host kernel in netns rxpath-9bbb44e0" in printed
    table = printed.split("#sender (ss -tin in namespace rxpath-9bbb44e0)\n")[1].splitlines()
    assert table[0].split()[:3] == ["flow", "cwnd", "ssthresh"]
    assert table[1].split()[:3] == ["f1", "140", "34"]
    page = render(load_run(rd))
    assert "f1: 10.0.0.1:40001 -&gt; 10.0.0.2:5001" in page
    assert "f1: sender, the host kernel in netns rxpath-9bbb44e0" in page
    # The real sender's state over time: one panel per track, a point per ss sample that
    # shows its socket connected (3); ssthresh from the first sample that has one (2).
    panels = {label: n for n, label in re.findall(
        r'data-points="(\d+)" role="img" aria-label="f1: the Linux sender \(ss -tin\), '
        r'([^"]+)"', page)}
    assert panels == {"congestion window (cwnd)": "3", "slow-start threshold (ssthresh)": "2",
                      "packets in flight": "3", "smoothed RTT (srtt)": "3",
                      "send window (snd_wnd, as the receiver advertised it)": "3",
                      "segments retransmitted (total)": "3"}, panels


def test_tcp_info_fields_by_offset() -> None:
    raw = bytearray(TCP_INFO_LEN)
    raw[3] = 4                                        # tcpi_probes
    struct.pack_into("<I", raw, 8 + 4 * 18, 42)       # tcpi_snd_cwnd
    struct.pack_into("<I", raw, 8 + 4 * 23, 7)        # tcpi_total_retrans
    struct.pack_into("<I", raw, 228, 0)               # tcpi_snd_wnd
    info = parse_tcp_info(bytes(raw))
    assert (info["probes"], info["snd_cwnd"], info["total_retrans"], info["snd_wnd"]) == (
        4, 42, 7, 0)
    assert "snd_wnd" not in parse_tcp_info(bytes(raw[:104]))  # an older kernel's struct


def test_each_flow_gets_its_own_sender_with_its_source_port() -> None:
    sc = load_scenario(CONFIGS / "linux-sender.toml")
    cfg = tunwire_config(sc, "rxpath-x")
    assert [(s["flow"], s["sport"], s["dport"]) for s in cfg["senders"]] == [
        ("f1", 40001, 5001)]
    assert (cfg["local"], cfg["remote"]) == (sc.peer.address, sc.stack.address)


# -- real runs --------------------------------------------------------------------------


@REAL
def test_clean_transfer_is_intact_byte_for_byte(run_dir: Path) -> None:
    s = _run("linux-sender.toml", run_dir)
    assert s["integrity"] and s["checker"]["ok"], s["checker_text"]
    f = s["flows"][0]
    assert f["received"] == f["bytes"] == 4_000_000
    assert _sender(s)["bytes_sent"] == 4_000_000
    assert _sender(s)["cwnd"] > 0
    assert (run_dir / "wire.pcap").stat().st_size > 4_000_000
    # The sampler: ss -tin every 100 ms while the sender ran, then gone with the run (the
    # leftover check above looks for any process naming the run dir).
    samples = parse_ss_samples((run_dir / "ss-sender.txt").read_text())
    connected = [t for t, socks in samples
                 for sk in socks if sk["peer"] == "10.0.0.2:5001" and "cwnd" in sk]
    assert len(connected) >= 3, samples
    gaps = [b - a for a, b in itertools.pairwise(connected)]
    assert max(gaps) < 0.5, gaps
    # Its last view in the summary is a sample of the flow's own 4-tuple.
    view = _sender(s)["ss"]
    assert (view["local"], view["peer"]) == ("10.0.0.1:40001", "10.0.0.2:5001")
    # taken as the sender's FIN went by, before the tunwire passed it on: every byte
    # acked (the built-in sender waits for that), the FIN not yet
    assert view["state"] == "FIN-WAIT-1", view
    assert "bytes_acked:4000001" in view["info"], view
    # The summary's stats come before the stop: samples of the closing socket may follow.
    before = [t for t in connected if t <= view["t_s"]]
    assert view["samples"] >= len(before) - 1 and "cwnd:" in view["info"], (view, connected)
    # rxpath ss: the receiver's socket, then the sender's, as in the summary.
    res = CliRunner().invoke(app, ["ss", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == socket_lines(s, run_dir)
    assert res.output.index("f1: receiver") < res.output.index("f1: sender") \
        < res.output.index("f1: side by side")
    assert view["line"].split()[0] + " " in res.output
    # The report plots the real sender's cwnd over time.
    page = render(load_run(run_dir))
    m = re.search(r'data-points="(\d+)" role="img" aria-label="f1: the Linux sender '
                  r'\(ss -tin\), congestion window', page)
    assert m and int(m[1]) >= len(connected), m


@REAL
def test_ring_overflow_is_recovered_by_real_retransmissions(run_dir: Path) -> None:
    s = _run("linux-sender-ring-overflow.toml", run_dir)
    assert s["integrity"] and s["checker"]["ok"], s["checker_text"]
    assert s["nic"]["rx_missed_errors"] > 0
    assert _sender(s)["segments_retransmitted"] > 0


@REAL
def test_slow_reader_makes_the_real_sender_see_a_zero_window(run_dir: Path) -> None:
    s = _run("linux-sender-slow-reader.toml", run_dir)
    assert s["integrity"] and s["checker"]["ok"], s["checker_text"]
    assert s["nstat"].get("TcpExtTCPToZeroWindowAdv", 0) > 0
    assert s["nstat"].get("TcpExtTCPFromZeroWindowAdv", 0) > 0
    assert _sender(s)["rwnd_limited_ms"] > 0
    assert _sender(s)["zero_window_samples"] > 0  # ss inside the namespace saw it too


@REAL
def test_several_flows_and_senders_at_once_one_a_command(run_dir: Path,
                                                        tmp_path: Path) -> None:
    # Two flows on two queues and cpus: f1 from the built-in sender, f2 from any program
    # (here a Python one-liner that binds the flow's port and sends {file}, the flow's
    # payload), each checked byte for byte.
    prog = ("import socket,sys;s=socket.socket();s.bind((sys.argv[1],int(sys.argv[2])));"
            "s.connect((sys.argv[3],int(sys.argv[4])));s.sendall(open(sys.argv[5],'rb')"
            ".read());s.close()")
    command = json.dumps([sys.executable, "-c", prog, "{src}", "{sport}", "{dst}", "{dport}",
                          "{file}"])
    cfg = tmp_path / "two.toml"
    cfg.write_text(f"""
description = "two real senders"
duration = 30.0
[nic]
device = "tun"
queues = 2
ring_size = 4096
[[flows]]
name = "f1"
bytes = 1_000_000
[[flows]]
name = "f2"
bytes = 700_000
[[linux_senders]]
name = "builtin"
flows = ["f1"]
[[linux_senders]]
name = "cmd"
flows = ["f2"]
command = {command}
""")
    s = run_scenario(load_scenario(cfg), run_dir, progress=False)
    assert s["integrity"] and s["checker"]["ok"], s["checker_text"]
    assert [(f["flow"], f["received"], f["sender"]["kind"]) for f in s["flows"]] == [
        ("f1", 1_000_000, "builtin"), ("f2", 700_000, "command")]
    assert _wait_nothing_left(s["netns"], run_dir, LEFTOVER_TIMEOUT_S) == []


@REAL
def test_legacy_and_modern_differ_with_the_same_real_sender(run_dir: Path,
                                                            tmp_path: Path) -> None:
    legacy = _run("linux-sender.toml", run_dir)
    modern = _run("linux-sender-modern.toml", tmp_path / "modern")
    assert legacy["integrity"] and modern["integrity"]
    assert legacy["nstat"].get("TcpExtTCPPrequeued", 0) > 0
    assert "TcpExtTCPPrequeued" not in modern["nstat"]


@REAL
def test_a_namespace_no_guard_watches_is_swept() -> None:
    name = "rxpath-stale" + format(os.getpid(), "x")[-4:]
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        assert name not in sweep_stale()  # young: perhaps a run starting now
        assert name in sweep_stale(min_age_s=0)
        assert not netns_exists(name)
    finally:
        delete_netns(name)


@REAL
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_killing_the_launcher_leaves_nothing_behind(run_dir: Path, sig: int) -> None:
    run_dir.mkdir(parents=True)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "run", str(CONFIGS / "linux-sender-slow-reader.toml"),
         "--run-dir", str(run_dir), "-q"], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        # Wait for the namespace and a connected real sender (its ss sample).
        while not ((run_dir / "ss-sender.txt").exists()
                   and "ESTAB" in (run_dir / "ss-sender.txt").read_text()):
            assert launcher.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the real sender never connected"
            time.sleep(0.05)  # polling for the event against a deadline
        netns = (run_dir / "netns.txt").read_text().strip()
        assert netns_exists(netns)
        os.kill(launcher.pid, sig)
        launcher.wait(timeout=20)
        left = _wait_nothing_left(netns, run_dir, 5.0)
        assert left == [], f"left behind after {signal.Signals(sig).name}: {left}"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


_TWO_FLOWS = """
[[flows]]
name = "f1"
[[flows]]
name = "f2"
"""


@pytest.mark.parametrize(("senders", "error"), [
    ('[[linux_senders]]\nflows = ["f3"]\n', "linux_senders[0].flows: expected a non-empty array"),
    ('[[linux_senders]]\nflows = ["f1"]\n[[linux_senders]]\nflows = ["f1"]\n',
     "linux_senders[1].flows: expected flows no other sender has"),
    ('[[linux_senders]]\ncommand = ["nc"]\n',
     "linux_senders[0].flows: expected exactly one flow for a command sender"),
    ('[[linux_senders]]\nflows = ["f1"]\n', "linux_senders: expected a sender for every flow"),
    ('[[linux_senders]]\ncommand = "nc"\nflows = ["f1"]\n[[linux_senders]]\n',
     "linux_senders[0].command: expected an array of strings"),
])
def test_linux_senders_are_validated(senders: str, error: str) -> None:
    from cli.config import ConfigError, parse_scenario

    with pytest.raises(ConfigError) as err:
        parse_scenario(_TWO_FLOWS + senders, "x.toml")
    assert error in str(err.value)


def test_a_sender_without_flows_takes_the_rest() -> None:
    from cli.config import parse_scenario

    sc = parse_scenario(_TWO_FLOWS + '[[linux_senders]]\nflows = ["f2"]\n[[linux_senders]]\n')
    assert [s.flows for s in sc.linux_senders] == [("f2",), ("f1",)]
    assert sc.real_senders


def test_a_file_sender_makes_its_flows_as_long_as_the_file(tmp_path: Path) -> None:
    from cli.config import parse_scenario

    data = tmp_path / "data.bin"
    data.write_bytes(bytes(range(256)) * 40)
    cfg = tmp_path / "f.toml"
    cfg.write_text(_TWO_FLOWS + '[[linux_senders]]\nfile = "data.bin"\n')
    sc = parse_scenario(cfg.read_text(), str(cfg))
    assert [f.bytes for f in sc.flows] == [10_240, 10_240]
    assert sc.sender_file("f1") == str(data.resolve())


@pytest.mark.parametrize(("senders", "error"), [
    ('[[linux_senders]]\nfile = "missing.bin"\n',
     "linux_senders[0].file: expected a readable, non-empty file"),
    ('[[linux_senders]]\nfile = "empty.bin"\n',
     "linux_senders[0].file: expected a readable, non-empty file"),
])
def test_a_sender_file_is_validated(tmp_path: Path, senders: str, error: str) -> None:
    from cli.config import ConfigError, parse_scenario

    (tmp_path / "empty.bin").write_bytes(b"")
    cfg = tmp_path / "f.toml"
    cfg.write_text(_TWO_FLOWS + senders)
    with pytest.raises(ConfigError) as err:
        parse_scenario(cfg.read_text(), str(cfg))
    assert error in str(err.value) and str(cfg) in str(err.value)


def test_a_flow_length_that_contradicts_the_file_is_refused(tmp_path: Path) -> None:
    from cli.config import ConfigError, parse_scenario

    (tmp_path / "d.bin").write_bytes(b"x" * 100)
    cfg = tmp_path / "f.toml"
    cfg.write_text('[[flows]]\nname = "f1"\nbytes = 99\n'
                   '[[linux_senders]]\nfile = "d.bin"\n')
    with pytest.raises(ConfigError) as err:
        parse_scenario(cfg.read_text(), str(cfg))
    assert "flows[0].bytes: expected the size of the file its sender sends (100)" in \
        str(err.value)


@REAL
@pytest.mark.skipif(shutil.which("nc") is None, reason="nc (netcat-openbsd) is not installed: "
                    "sh docker/install-host-deps.sh")
def test_nc_sends_a_users_file_checked_against_the_file(run_dir: Path) -> None:
    # The shipped scenario: netcat sends README.md; the reader's bytes are compared with
    # the file byte for byte and the verdict carries its SHA-256.
    s = _run("linux-sender-file.toml", run_dir)
    assert s["integrity"] and s["checker"]["ok"], s["checker_text"]
    readme = (CONFIGS.parent / "README.md").read_bytes()
    f = s["flows"][0]
    assert f["received"] == f["bytes"] == len(readme) and f["bad_chunks"] == 0
    assert hashlib.sha256(readme).hexdigest() in s["checker_text"]
    assert _sender(s)["kind"] == "command"


@REAL
def test_bytes_that_differ_from_the_file_are_caught(run_dir: Path, tmp_path: Path) -> None:
    # A command that sends something other than the scenario's file (one byte changed):
    # the reader counts the bad chunk and the checker names the first wrong offset.
    good = tmp_path / "good.bin"
    good.write_bytes(bytes(range(251)) * 400)
    bad = bytearray(good.read_bytes())
    bad[54_321] ^= 0xFF
    (tmp_path / "sent.bin").write_bytes(bytes(bad))
    prog = ("import socket,sys;s=socket.socket();s.bind((sys.argv[1],int(sys.argv[2])));"
            "s.connect((sys.argv[3],int(sys.argv[4])));s.sendall(open(sys.argv[5],'rb')"
            ".read());s.close()")
    command = json.dumps([sys.executable, "-c", prog, "{src}", "{sport}", "{dst}", "{dport}",
                          str(tmp_path / "sent.bin")])
    cfg = tmp_path / "file.toml"
    cfg.write_text(f'duration = 30.0\n[nic]\ndevice = "tun"\nqueues = 1\n[cpu]\ncount = 1\n'
                   f'[[flows]]\nname = "f1"\n[[linux_senders]]\nfile = "good.bin"\n'
                   f'command = {command}\n')
    s = run_scenario(load_scenario(cfg), run_dir, progress=False)
    assert _wait_nothing_left(s["netns"], run_dir, LEFTOVER_TIMEOUT_S) == []
    f = s["flows"][0]
    assert f["received"] == len(bad) and f["bad_chunks"] >= 1
    assert not s["checker"]["ok"] and not s["integrity"]
    # the witness: the delivered piece holding the changed byte, and the file's digest there
    m = re.search(r"\[(\d+), (\d+)\) digest \w+; the sender's file has digest",
                  s["checker_text"])
    assert m and int(m[1]) <= 54_321 < int(m[2]), s["checker_text"]
