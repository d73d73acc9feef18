"""Readers serving several flows (epoll servers), and a run at scale.

The scale run is the receive path's breadth at once: 1,000 connections, accepted by 16
epoll servers over 4 emulated cpus (the machine has 2 cores), every byte checked and no
message lost between the actors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actors.profiles import LEGACY, MODERN
from actors.scenario import Scenario
from actors.stack.net import OpDone
from cli.bench import scale_run, scale_scenario
from cli.config import load_scenario
from cli.run import run_scenario
from protocol.sockops import Accepted, InetAcceptFlow
from tests.test_stack_rules import handshake_ack, new_stack, syn, transmitted

ROOT = Path(__file__).resolve().parent.parent


def test_somaxconn_is_the_kernels_default_per_profile() -> None:
    # SOMAXCONN was 128 until "net: increase SOMAXCONN to 4096" (v5.4).
    assert LEGACY.default_sysctls.somaxconn == 128
    assert MODERN.default_sysctls.somaxconn == 4096


@pytest.mark.parametrize(("profile", "backlog", "expected"), [
    ("legacy", 1024, 128), ("modern", 1024, 1024), ("modern", 8192, 4096)])
def test_listen_backlog_is_capped_at_somaxconn(profile: str, backlog: int,
                                               expected: int) -> None:
    # __sys_listen: backlog = min(backlog, somaxconn), kept as sk_max_ack_backlog.
    stack = new_stack(profile)
    lsn = stack.listen("10.0.0.2", 5001, 0, backlog=backlog)
    assert stack.net.socks[lsn].backlog_max == expected


def test_a_server_accepts_the_oldest_of_its_flows_and_learns_which() -> None:
    # An epoll server's accept takes whichever of its connections completed first
    # (inet_csk_accept: the head of the accept queue among them), not a fixed order.
    stack = new_stack("modern")
    stack.listen("10.0.0.2", 5001, 0)
    for sport in (40003, 40002):  # 40003 completes its handshake first
        stack.tcp_v4_rcv(syn(sport), 0)
        (synack,) = transmitted(stack)
        stack.tcp_v4_rcv(handshake_ack(synack, sport), 1)
    first = stack.sock_op("web", InetAcceptFlow(5001, [40001, 40002, 40003]), 2)
    assert isinstance(first, Accepted) and first.rport == 40003
    second = stack.sock_op("web", InetAcceptFlow(5001, [40001, 40002]), 2)
    assert isinstance(second, Accepted) and second.rport == 40002
    assert stack.sock_op("web", InetAcceptFlow(5001, [40001]), 2) is None  # sleeps
    stack.tcp_v4_rcv(syn(40001), 3)
    (synack,) = transmitted(stack)
    stack.tcp_v4_rcv(handshake_ack(synack, 40001), 4)
    done = [o for o in stack.take_outputs() if isinstance(o, OpDone)]
    assert [(o.task, o.result.rport) for o in done
            if isinstance(o.result, Accepted)] == [("web", 40001)]


def _intact(summary: dict, sc: Scenario) -> None:
    bad = [f for f in summary["flows"] if not f["intact"]]
    assert summary["reason"] == "complete" and summary["integrity"], (
        summary["reason"], bad[:5], summary["errors"][:5])
    assert summary["checker"]["ok"], summary.get("checker_text")
    assert len(summary["flows"]) == len(sc.flows)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_epoll_servers_read_every_flow_they_serve(tmp_path: Path) -> None:
    sc = load_scenario(ROOT / "configs" / "epoll-server.toml")
    summary = run_scenario(sc, tmp_path, progress=False)
    _intact(summary, sc)
    readers = summary["readers"]
    assert set(readers) == {"web1", "web2"}
    for name, r in readers.items():
        served = sc.reader(name).served_flows
        assert len(served) == 4
        # Each server's counters, per flow and in total, add up to what it served.
        assert set(r["flows"]) == set(served)
        assert r["bytes"] == sum(sc.flow(f).bytes for f in served)
        assert all(r["flows"][f]["bytes"] == sc.flow(f).bytes for f in served)
        assert all(r["flows"][f]["eof"] == 1 for f in served)
    # Non-blocking reads until EAGAIN, then epoll_wait. A server that lags behind its
    # flows the whole run finds data at every read until EOF, and on a slow machine one
    # of them may (2 runs in 10 did); both would mean neither ever caught up.
    assert sum(r["eagain"] for r in readers.values()) > 0
    assert all(f["readers"] == [sc.flows[i].reader] for i, f in enumerate(summary["flows"]))
    assert summary["nstat"].get("TcpExtTCPPrequeued", 0) == 0  # nobody blocks in read()


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_a_thousand_flows_to_sixteen_readers_over_four_cpus(tmp_path: Path) -> None:
    sc = scale_scenario(1000, 16, 4, nbytes=4000)
    res = scale_run(sc, tmp_path, progress=False)  # what `rxpath bench --scale` reports
    summary = json.loads((tmp_path / "summary.json").read_text())
    _intact(summary, sc)
    assert summary["nstat"]["TcpPassiveOpens"] == 1000
    counters = json.loads((tmp_path / "counters.json").read_text())
    assert len([n for n in counters if n.startswith("r")]) == 16
    for name, c in counters.items():
        t = c["transport"]
        assert t["transport_lost"] == 0 and not t["rejected_messages"], (name, t)
    assert res["complete"] and res["intact"] and res["transport_lost"] == 0
    assert (res["flows"], res["readers"], res["cpus"]) == (1000, 16, 4)
    assert set(res["cpu_us_per_segment"]) == {"peer", "nic", "cpu", "stack", "reader"}
