"""The scenarios in configs/: each validates, and each shows what its comment promises.

The integration tests start every actor as a real process (``run_scenario``) and read
what a user reads: the summary (nstat counters, NIC figures, flows, readers) and the
run directory's ``counters.json`` (the stack's plain counters such as
``backlog_enqueued``). Each run takes a few seconds on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.profiles import MODERN
from actors.runtime import procutil
from actors.scenario import Scenario
from cli.config import Overrides, load_scenario
from cli.run import run_scenario

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
CONFIG_FILES = sorted(CONFIGS.glob("*.toml"))

# One scenario per receive-path mechanism.
EXPECTED = {
    "fast-path", "retransmission-dsack", "slow-reader-zero-window", "partial-overlap",
    "ofo-reassembly", "low-latency-0", "low-latency-1", "backlog-drop", "ring-overflow",
    "shared-socket", "modern", "epoll-server", "gro",
}
PREQUEUE_COUNTERS = ("TcpExtTCPPrequeued", "TcpExtTCPDirectCopyFromPrequeue",
                     "TcpExtTCPPrequeueDropped")


def config(name: str) -> Path:
    return CONFIGS / f"{name}.toml"


def comment_block(path: Path) -> str:
    """The leading comment lines of a scenario file, without their '#'."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return "\n".join(lines)


# --------------------------------------------------------------------------- validation


def test_there_is_a_scenario_for_every_mechanism() -> None:
    assert {p.stem for p in CONFIG_FILES} >= EXPECTED


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_config_validates_and_round_trips(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.description
    assert sc.duration <= 30, "a scenario is meant to finish in seconds"
    again = Scenario.from_dict(sc.to_dict())
    assert again == sc


@settings(max_examples=30, deadline=None)
@given(path=st.sampled_from(CONFIG_FILES), profile=st.sampled_from(["legacy", "modern"]),
       seed=st.integers(0, 2**32))
def test_every_config_takes_the_command_line_overrides(path: Path, profile: str,
                                                        seed: int) -> None:
    # `rxpath run CONFIG --profile P --seed N` must work for every scenario file.
    sc = load_scenario(path, Overrides(profile=profile, seed=seed))
    assert (sc.profile, sc.seed) == (profile, seed)
    base = load_scenario(path)
    assert sc.flows == base.flows and sc.readers == base.readers
    assert Scenario.from_dict(sc.to_dict()) == sc


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_config_starts_by_saying_what_the_user_will_see(path: Path) -> None:
    text = comment_block(path)
    assert len(text.splitlines()) >= 5, "a comment block explaining the scenario comes first"


# The counters each scenario's comment names, and its run below checks.
PROMISED_NAMES = {
    "fast-path": ("TCPHPHits", "TCPOFOQueue"),
    "retransmission-dsack": ("DelayedACKLost", "TCPDSACKOldSent"),
    "slow-reader-zero-window": ("TCPToZeroWindowAdv", "TCPWantZeroWindowAdv",
                                "TCPFromZeroWindowAdv", "probes"),
    "partial-overlap": ("TCPDSACKOldSent", "DelayedACKLost"),
    "ofo-reassembly": ("TCPOFOQueue", "sacks"),
    "low-latency-0": ("TCPPrequeued", "TCPDirectCopyFromPrequeue"),
    "low-latency-1": ("TCPPrequeued", "TCPDirectCopyFromPrequeue"),
    "backlog-drop": ("TCPBacklogDrop", "backlog_enqueued"),
    "ring-overflow": ("rx_missed_errors",),
    "shared-socket": ("lock_waits",),
    "modern": ("TCPBacklogCoalesce", "TCPAckCompressed", "TCPPrequeued"),
    "gro": ("IpInReceives", "processed", "rx_packets", "tx_packets", "segs_in"),
}


@pytest.mark.parametrize("name", sorted(PROMISED_NAMES))
def test_the_comment_names_the_counters_the_run_shows(name: str) -> None:
    text = comment_block(config(name))
    for counter in PROMISED_NAMES[name]:
        assert counter in text, f"{name}.toml's comment does not mention {counter}"


def test_low_latency_pair_differs_only_in_the_sysctl() -> None:
    zero, one = load_scenario(config("low-latency-0")), load_scenario(config("low-latency-1"))
    assert (zero.sysctl.tcp_low_latency, one.sysctl.tcp_low_latency) == (0, 1)
    assert zero.profile == one.profile == "legacy"
    a, b = zero.to_dict(), one.to_dict()
    for d in (a, b):
        d["sysctl"].pop("tcp_low_latency")
        d.pop("description")
    assert a == b


# --------------------------------------------------------------------------- running


# The sender's figures worth seeing when a promise fails.
_SENDER_KEYS = ("segments_retransmitted", "retrans_fast", "retrans_rto", "rto_count", "sacks",
                "dsacks", "probes")


class Run:
    """One finished run: the summary and the run directory's raw counters."""

    def __init__(self, summary: dict[str, Any], run_dir: Path) -> None:
        self.summary = summary
        self.counters: dict[str, Any] = json.loads((run_dir / "counters.json").read_text())

    def nstat(self, name: str) -> int:
        return int(self.summary["nstat"].get(name, 0))

    def nic(self, name: str) -> int:
        return int(self.summary["nic"].get(name, 0))

    def stack(self, name: str) -> int:
        return int(self.counters["stack"]["role"][name])

    def sender(self, name: str) -> int:
        return sum(int(f["sender"][name]) for f in self.summary["flows"])

    def describe(self) -> str:
        s = self.summary
        return json.dumps({"reason": s["reason"], "nstat": s["nstat"], "nic": s["nic"],
                           "flows": [{**{k: f[k] for k in ("flow", "bytes", "received", "intact")},
                                      **{k: f["sender"].get(k) for k in _SENDER_KEYS}}
                                     for f in s["flows"]],
                           "errors": s["errors"]}, default=str)

    def assert_intact(self) -> None:
        s = self.summary
        assert s["reason"] == "complete", self.describe()
        for f in s["flows"]:
            assert f["received"] == f["bytes"] and f["bad_chunks"] == 0 and f["eof"], \
                self.describe()
        assert s["integrity"], self.describe()
        if "checker" in s:
            assert s["checker"]["ok"], s.get("checker_text")


def run(sc: Scenario, run_dir: Path) -> Run:
    return Run(run_scenario(sc, run_dir, progress=False), run_dir)


def run_config(name: str, run_dir: Path, overrides: Overrides | None = None) -> Run:
    return run(load_scenario(config(name), overrides), run_dir)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_the_default_run_delivers_every_byte_of_every_flow(tmp_path: Path) -> None:
    sc = load_scenario(None)
    r = run(sc, tmp_path)
    r.assert_intact()
    assert [f["received"] for f in r.summary["flows"]] == [f.bytes for f in sc.flows]
    assert all(c["bad_bytes"] == 0 for c in r.summary["readers"].values())


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_a_reader_holding_the_lock_sends_segments_to_the_backlog_and_a_small_limit_drops(
        tmp_path: Path) -> None:
    r = run_config("backlog-drop", tmp_path)
    r.assert_intact()
    assert r.stack("backlog_enqueued") > 0, r.describe()
    assert r.nstat("TcpExtTCPBacklogDrop") > 0, r.describe()
    assert r.summary["drops"].get("SOCKET_BACKLOG", 0) == r.nstat("TcpExtTCPBacklogDrop")
    # The dropped segments came back as retransmissions.
    assert r.sender("segments_retransmitted") > 0


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_with_a_large_limit_the_backlog_is_used_without_drops(tmp_path: Path) -> None:
    # The same lock-holding reader, full-sized segments and a roomy buffer: the backlog
    # never reaches sk_rcvbuf + sk_sndbuf + 64 KB.
    data = load_scenario(config("backlog-drop")).to_dict()
    data["peer"]["mss"] = 1460
    data["stack"]["rcvbuf"] = 262144
    r = run(Scenario.from_dict(data), tmp_path)
    r.assert_intact()
    assert r.stack("backlog_enqueued") > 0, r.describe()
    assert r.nstat("TcpExtTCPBacklogDrop") == 0, r.describe()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_legacy_low_latency_0_with_a_blocked_reader_prequeues(tmp_path: Path) -> None:
    r = run_config("low-latency-0", tmp_path)
    r.assert_intact()
    assert r.nstat("TcpExtTCPPrequeued") > 0, r.describe()
    # Replayed in the reader's context, segments were copied straight to its buffer.
    assert sum(c["direct_bytes"] for c in r.summary["readers"].values()) > 0, r.describe()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_the_modern_profile_never_prequeues(tmp_path: Path) -> None:
    # The workload that prequeues on the legacy kernel, run on the modern one.
    r = run_config("low-latency-0", tmp_path, Overrides(profile="modern"))
    r.assert_intact()
    for name in MODERN.absent_counters:
        assert r.nstat(name) == 0, (name, r.describe())
    assert all(c["direct_bytes"] == 0 for c in r.summary["readers"].values())
    assert all(sk["prequeue_segs"] == 0 for sk in r.summary["sockets"])


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_ring_overflow_drops_at_the_nic_and_still_delivers_everything(tmp_path: Path) -> None:
    r = run_config("ring-overflow", tmp_path)
    r.assert_intact()
    assert r.nic("rx_missed_errors") > 0, r.describe()
    # What the NIC missed never reached IP: the stack saw only what the NIC delivered.
    assert r.nstat("IpInReceives") == r.nic("rx_packets")
    assert r.sender("segments_retransmitted") >= 1


# Each remaining scenario's promise, checked on a real run of its file.
Check = Callable[[Run], None]


def _no_loss_seen(r: Run) -> None:
    """Nothing was lost or reordered: no hole, no fast retransmit. A stall longer than
    the 200 ms RTO on a loaded machine may still resend a late segment; each such
    duplicate must then be explained by a timeout."""
    assert r.nstat("TcpExtTCPOFOQueue") == 0
    assert r.nic("rx_missed_errors") == 0
    assert r.sender("retrans_fast") == 0
    assert r.nstat("TcpExtDelayedACKLost") <= r.sender("retrans_rto")
    assert set(r.summary["drops"]) <= {"TCP_OLD_DATA", "TCP_OLD_SEQUENCE"}


def _fast_path(r: Run) -> None:
    assert r.nstat("TcpExtTCPHPHits") > 0
    _no_loss_seen(r)


def _retransmission_dsack(r: Run) -> None:
    assert r.nstat("TcpExtDelayedACKLost") > 0
    assert r.nstat("TcpExtTCPDSACKOldSent") > 0
    assert r.sender("segments_retransmitted") > 0
    assert r.sender("dsacks") > 0


def _slow_reader(r: Run) -> None:
    assert r.nstat("TcpExtTCPToZeroWindowAdv") > 0
    assert r.nstat("TcpExtTCPWantZeroWindowAdv") > 0
    assert r.nstat("TcpExtTCPFromZeroWindowAdv") > 0
    assert r.sender("probes") > 0
    assert r.sender("zero_window_acks") > 0


def _partial_overlap(r: Run) -> None:
    # A full duplicate counts DelayedACKLost and TCPDSACKOldSent; a partial overlap
    # counts TCPDSACKOldSent alone.
    assert r.nstat("TcpExtTCPDSACKOldSent") > r.nstat("TcpExtDelayedACKLost")
    assert r.sender("retrans_rto") > 0


def _ofo(r: Run) -> None:
    assert r.nstat("TcpExtTCPOFOQueue") > 0
    assert r.sender("sacks") > 0
    assert r.sender("retrans_fast") == 0  # two segments of reordering: never marked lost
    assert r.nstat("TcpExtTCPDSACKOldSent") <= r.sender("retrans_rto")


def _low_latency_1(r: Run) -> None:
    for name in (*PREQUEUE_COUNTERS, "TcpExtTCPDirectCopyFromBacklog",
                 "TcpExtTCPHPHitsToUser"):
        assert r.nstat(name) == 0, name
    assert r.nstat("TcpExtTCPHPHits") > 0


def _shared_socket(r: Run) -> None:
    assert len(r.summary["readers"]) >= 2
    assert r.stack("lock_waits") > 0
    assert r.stack("backlog_enqueued") > 0
    got = [c["bytes"] for c in r.summary["readers"].values()]
    assert all(n > 0 for n in got)
    assert sum(got) == r.summary["flows"][0]["bytes"]


def _modern(r: Run) -> None:
    assert r.summary["profile"] == "modern"
    assert r.nstat("TcpExtTCPBacklogCoalesce") > 0
    assert r.nstat("TcpExtTCPAckCompressed") > 0
    for name in MODERN.absent_counters:  # the legacy kernel's prequeue and direct copy
        assert r.nstat(name) == 0, name


def _gro(r: Run) -> None:
    merged = sum(r.summary["gro_merged"].values())
    rx = r.nic("rx_packets")
    skbs = r.nstat("IpInReceives")
    assert skbs + merged == rx and skbs * 4 < rx  # ip_rcv once per skb, several frames each
    assert sum(int(cols[0]) for cols in r.summary["softnet_stat"].values()) == skbs
    assert r.nic("tx_packets") * 4 < rx  # about an ACK per skb, not one per two segments
    (sock,) = [s for s in r.summary["sockets"] if s.get("data_segs_in")]
    assert sock["data_segs_in"] >= r.summary["flows"][0]["bytes"] // 1448  # wire segments
    _no_loss_seen(r)


PROMISES: dict[str, Check] = {
    "fast-path": _fast_path,
    "retransmission-dsack": _retransmission_dsack,
    "slow-reader-zero-window": _slow_reader,
    "partial-overlap": _partial_overlap,
    "ofo-reassembly": _ofo,
    "low-latency-1": _low_latency_1,
    "shared-socket": _shared_socket,
    "modern": _modern,
    "gro": _gro,
}


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(PROMISES))
def test_the_scenario_shows_its_promise(name: str, tmp_path: Path) -> None:
    r = run_config(name, tmp_path)
    r.assert_intact()
    try:
        PROMISES[name](r)
    except AssertionError as err:
        raise AssertionError(f"{name}: {err}\n{r.describe()}") from None


# --------------------------------------------------------------------------- the launcher


def actor_pids(run_dir: Path) -> dict[str, int]:
    """Actor name -> pid, from the launcher's log of the processes it spawned."""
    pids = {}
    log = run_dir / "logs" / "launcher.jsonl"
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "spawned":
            pids[rec["actor"]] = int(rec["pid"])
    return pids


def processes_in(run_dir: Path) -> list[int]:
    """Live actor processes of this run, from /proc (their command line names the run)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"actors.runtime.main" in cmdline and str(run_dir).encode() in cmdline \
                and procutil.pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def wait_until_started(proc: subprocess.Popen[bytes], run_dir: Path, timeout_s: float) -> None:
    """Block until the launcher logs ``started``: every actor is up and traffic flows."""
    log = run_dir / "logs" / "launcher.jsonl"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "rxpath run ended early"
        if log.is_file() and any(json.loads(line).get("event") == "started"
                                 for line in log.read_text().splitlines() if line.strip()):
            return
        # Wait for the process or a short tick, whichever comes first (no fixed sleep:
        # the condition above is re-checked on every wakeup).
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)
    raise AssertionError(f"the launcher did not start the actors in {timeout_s} s")


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_killing_the_launcher_leaves_no_actor_behind(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    sc = load_scenario(config("slow-reader-zero-window"))  # seconds of traffic: time to act
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "run", str(config("slow-reader-zero-window")),
         "--run-dir", str(run_dir)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        wait_until_started(proc, run_dir, 60)
        spawned = actor_pids(run_dir)
        expected = {"peer", "nic", "stack", *(f"cpu{i}" for i in range(sc.cpu.count)),
                    *(r.name for r in sc.readers)}
        assert set(spawned) == expected
        live = processes_in(run_dir)
        assert sorted(live) == sorted(spawned.values())
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert procutil.wait_pids_gone(spawned.values(), 15) == []
        assert processes_in(run_dir) == []
    finally:
        proc.kill()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()
