"""`rxpath stat` / `rxpath ss` print a run's figures as nstat / ss / ethtool print them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app

SOCK = {
    "sock": 2, "state": "ESTAB", "local": "10.0.0.2:5001", "peer": "10.0.0.1:40001",
    "recv_q": 1448, "skmem": {"r": 2304, "rb": 378880, "t": 0, "tb": 16384, "f": 1792, "w": 0,
                              "o": 0, "bl": 0, "d": 7},
    "snd_wscale": 7, "rcv_wscale": 7, "rcv_mss": 1448, "advmss": 1460, "ato_ms": 40.0,
    "rcv_rtt_ms": 1.5, "rcv_space": 14480, "rcv_ssthresh": 64000, "rcv_wnd": 64128,
    "segs_in": 10, "data_segs_in": 9,
}


def run_dir(tmp_path: Path) -> Path:
    summary = {
        "nstat": {"TcpInSegs": 10, "IpInReceives": 10, "TcpExtTCPBacklogDrop": 3},
        "drops": {"SOCKET_BACKLOG": 3, "TCP_OLD_DATA": 1},
        "softnet_stat": {"cpu0": [10, 0, 2] + [0] * 8},
        "nic": {"rx_packets": 10, "rx_missed_errors": 0},
        "sockets": [SOCK],
        "stack": {"backlog_enqueued": 7, "lock_waits": 2},
        "profile": "legacy",
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def invoke(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def test_stat_prints_nonzero_counters_in_kernel_order(tmp_path: Path) -> None:
    out = invoke("stat", str(run_dir(tmp_path))).splitlines()
    assert out[0] == "#kernel"
    names = [line.split()[0] for line in out[1:]]
    assert names == ["IpInReceives", "TcpInSegs", "TcpExtTCPBacklogDrop"]
    # nstat's "%-32s%-16llu%6.1f"
    assert out[2] == "TcpInSegs" + " " * 23 + "10" + " " * 14 + "   0.0"


def test_stat_flags_are_nstats(tmp_path: Path) -> None:
    rd = str(run_dir(tmp_path))
    assert "TcpOutSegs" in invoke("stat", rd, "-z")
    assert invoke("stat", rd, "-a", "-s") == invoke("stat", rd)  # accepted, no history
    assert invoke("stat", rd, "--json") == (
        '{"kernel":{"IpInReceives":10,"TcpInSegs":10,"TcpExtTCPBacklogDrop":3}}\n')
    assert json.loads(invoke("stat", rd, "-j", "-p"))["kernel"]["TcpInSegs"] == 10
    # -a no longer means "other groups": those have their own flags
    assert "rx_packets" not in invoke("stat", rd, "-a")


def test_stat_groups_under_their_own_flags(tmp_path: Path) -> None:
    rd = str(run_dir(tmp_path))
    softnet = invoke("stat", rd, "--softnet").splitlines()
    assert softnet == ["0000000a 00000000 00000002" + " 00000000" * 8]
    nic = invoke("stat", rd, "--nic").splitlines()
    assert nic == ["NIC statistics:", "     rx_packets: 10", "     rx_missed_errors: 0"]
    stack = invoke("stat", rd, "--stack").splitlines()
    assert [line.split() for line in stack] == [["backlog_enqueued", "7"],
                                                ["lock_waits", "2"]]
    full = invoke("stat", rd, "--all-groups")
    for piece in ("#kernel", "SKB_DROP_REASON_SOCKET_BACKLOG", "NIC statistics:",
                  "0000000a", "lock_waits"):
        assert piece in full
    data = json.loads(invoke("stat", rd, "--all-groups", "--json"))
    assert set(data) == {"kernel", "softnet_stat", "nic", "drops", "stack"}
    assert data["drops"]["SKB_DROP_REASON_SOCKET_BACKLOG"] == {
        "segments": 3, "counter": "TcpExtTCPBacklogDrop"}


def test_stack_counters_from_counters_json_for_older_runs(tmp_path: Path) -> None:
    rd = run_dir(tmp_path)
    summary = json.loads((rd / "summary.json").read_text())
    del summary["stack"]
    (rd / "summary.json").write_text(json.dumps(summary))
    (rd / "counters.json").write_text(json.dumps(
        {"stack": {"role": {"backlog_enqueued": 5, "lock_waits": 1, "drops": {}}}}))
    assert [line.split() for line in invoke("stat", str(rd), "--stack").splitlines()] == [
        ["backlog_enqueued", "5"], ["lock_waits", "1"]]


def test_stat_drops_names_reason_and_counter(tmp_path: Path) -> None:
    out = invoke("stat", str(run_dir(tmp_path)), "--drops").splitlines()
    assert out[0].split() == ["SKB_DROP_REASON_SOCKET_BACKLOG", "3", "TcpExtTCPBacklogDrop"]
    assert out[1].split() == ["SKB_DROP_REASON_TCP_OLD_DATA", "1", "TcpExtDelayedACKLost"]


def test_stat_reads_an_older_runs_names_as_todays(tmp_path: Path) -> None:
    # Runs recorded before the names followed Linux 6.18 and nstat's IpExt group.
    rd = run_dir(tmp_path)
    summary = json.loads((rd / "summary.json").read_text())
    summary["nstat"]["IpInCsumErrors"] = 2
    summary["drops"] = {"TCP_BACKLOG": 3, "TCP_OLD_DATA": 1}
    (rd / "summary.json").write_text(json.dumps(summary))
    names = [line.split()[0] for line in invoke("stat", str(rd)).splitlines()[1:]]
    assert names == ["IpInReceives", "TcpInSegs", "TcpExtTCPBacklogDrop", "IpExtInCsumErrors"]
    out = invoke("stat", str(rd), "--drops").splitlines()
    assert out[0].split() == ["SKB_DROP_REASON_SOCKET_BACKLOG", "3", "TcpExtTCPBacklogDrop"]


def test_ss_prints_ss_tmi(tmp_path: Path) -> None:
    out = invoke("ss", str(run_dir(tmp_path))).splitlines()
    assert out[0] == "State Recv-Q Send-Q Local Address:Port Peer Address:Port Process"
    assert out[1] == "ESTAB 1448   0           10.0.0.2:5001     10.0.0.1:40001"
    assert out[2].startswith("\t skmem:(r2304,rb378880,t0,tb16384,f1792,w0,o0,bl0,d7) ")
    assert "rcvmss:1448" in out[2] and "rcv_space:14480" in out[2]
    assert "rcv_wnd:64128" in out[2] and "rcv_mss:" not in out[2]


def test_not_a_run_dir_exits_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["stat", str(tmp_path)])
    assert res.exit_code == 2
