"""`rxpath stat` / `rxpath ss` print a run's figures in nstat / ss shapes, exactly."""

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
        "drops": {"TCP_BACKLOG": 3, "TCP_OLD_DATA": 1},
        "softnet_stat": {"cpu0": [10, 0, 2] + [0] * 8},
        "nic": {"rx_packets": 10, "rx_missed_errors": 0},
        "sockets": [SOCK],
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
    assert out[2].split()[1] == "10" and out[3].split()[1] == "3"


def test_stat_zeros_json_and_all(tmp_path: Path) -> None:
    rd = str(run_dir(tmp_path))
    assert "TcpOutSegs" in invoke("stat", rd, "-z")
    assert json.loads(invoke("stat", rd, "--json")) == {
        "TcpInSegs": 10, "IpInReceives": 10, "TcpExtTCPBacklogDrop": 3}
    full = invoke("stat", rd, "-a")
    assert "0000000a 00000000 00000002" in full
    assert "rx_packets:" in full and "rx_missed_errors" not in full


def test_stat_drops_names_reason_and_counter(tmp_path: Path) -> None:
    out = invoke("stat", str(run_dir(tmp_path)), "--drops").splitlines()
    assert out[1].split() == ["SKB_DROP_REASON_TCP_BACKLOG", "3", "TcpExtTCPBacklogDrop"]
    assert out[2].split() == ["SKB_DROP_REASON_TCP_OLD_DATA", "1", "TcpExtDelayedACKLost"]


def test_ss_shows_skmem_and_receive_side_info(tmp_path: Path) -> None:
    out = invoke("ss", str(run_dir(tmp_path))).splitlines()
    assert out[0].split()[:3] == ["State", "Recv-Q", "Send-Q"]
    assert out[1].split() == ["ESTAB", "1448", "0", "10.0.0.2:5001", "10.0.0.1:40001"]
    assert "skmem:(r2304,rb378880,t0,tb16384,f1792,w0,o0,bl0,d7)" in out[2]
    assert "rcv_space:14480" in out[2] and "rcv_wnd:64128" in out[2]


def test_not_a_run_dir_exits_2(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["stat", str(tmp_path)])
    assert res.exit_code == 2
