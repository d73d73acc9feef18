"""``rxpath drill``: the packetdrill parser, the script runner on the kernel model, the CLI.

The scripts in tests/drill/ cover every tcp_data_queue case, SACK/DSACK, zero window,
delayed ACK, FIN handling and blocking reads; each must pass against the model, and
through the real actor processes (``--pipeline``, integration tests).
"""

from __future__ import annotations

import os
import signal
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from actors.profiles import get_profile
from cli.drill import run_script
from cli.drill.packetdrill import (
    BinaryExpr,
    CodeSpec,
    CommandSpec,
    EllipsisExpr,
    IntExpr,
    ListExpr,
    PacketSpec,
    ParseError,
    StructExpr,
    SyscallSpec,
    TcpOptionSpec,
    TimeKind,
    WordExpr,
    parse_file,
    parse_script,
)
from cli.drill.pipeline import PipelineReceiver
from cli.drill.runner import DrillRunner, Outcome, _shell_arith
from cli.main import app
from protocol.segment import Segment

DRILL_DIR = Path(__file__).parent / "drill"
SCRIPTS = sorted(DRILL_DIR.glob("*.pkt"))
# Scripts whose expectations hold for the 4.13 kernel too (no modern-only counters
# or drops): they also run in the legacy profile.
BOTH_PROFILES = {"active_open", "blocking_read", "data_queue_duplicate", "data_queue_in_order",
                 "data_queue_ofo", "data_queue_partial_overlap", "delayed_ack", "epoll_wait",
                 "fin", "sack_dsack"}

HANDSHAKE = """\
    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3
   +0 setsockopt(3, SOL_SOCKET, SO_REUSEADDR, [1], 4) = 0
   +0 bind(3, ..., ...) = 0
   +0 listen(3, 1) = 0
   +0 < S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>
   +0 > S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>
  +.1 < . 1:1(0) ack 1 win 257
   +0 accept(3, ..., ...) = 4
"""


def one_event(line: str) -> object:
    return parse_script(line + "\n").events[0]


def run_text(tmp_path: Path, body: str, profile: str = "modern", header: str = "",
             handshake: bool = True) -> object:
    path = tmp_path / "t.pkt"
    text = header + "`./defaults.sh`\n" + (HANDSHAKE if handshake else "") \
        + textwrap.dedent(body)
    path.write_text(text)
    return run_script(path, profile, verbose=True)


# ------------------------------------------------------------------------------- parser


@pytest.mark.parametrize(("text", "kind", "start", "end"), [
    ("0.100 close(3) = 0", TimeKind.ABSOLUTE, 100_000, None),
    ("+.1 close(3) = 0", TimeKind.RELATIVE, 100_000, None),
    ("+0 close(3) = 0", TimeKind.RELATIVE, 0, None),
    ("2 close(3) = 0", TimeKind.ABSOLUTE, 2_000_000, None),
    ("* > . 1:1(0) ack 1", TimeKind.ANY, 0, None),
    ("+0~+.04 > . 1:1(0) ack 1", TimeKind.RELATIVE_RANGE, 0, 40_000),
    ("0.1~0.2 > . 1:1(0) ack 1", TimeKind.ABSOLUTE_RANGE, 100_000, 200_000),
])
def test_event_times(text: str, kind: TimeKind, start: int, end: int | None) -> None:
    ev = one_event(text)
    assert (ev.time.kind, ev.time.start_us, ev.time.end_us) == (kind, start, end)


def test_blocking_call_end_time() -> None:
    ev = one_event("+.1...0.200 read(4, ..., 2000) = 2000")
    assert ev.time.kind == TimeKind.RELATIVE and ev.time.start_us == 100_000
    assert isinstance(ev.action, SyscallSpec)
    assert ev.action.blocking and ev.action.end_us == 200_000


def test_inbound_packet_fields() -> None:
    ev = one_event("+0 < FP. 1001:2001(1000) ack 1 win 257 urg 3 "
                   "<mss 1000,nop,wscale 7,sackOK,TS val 7 ecr 9,nop,nop,sack 1:2 3:4>")
    p = ev.action
    assert isinstance(p, PacketSpec) and p.inbound
    assert (p.flags, p.seq, p.end_seq, p.payload_len) == ("FP.", 1001, 2001, 1000)
    assert (p.ack, p.window, p.urg_ptr) == (1, 257, 3)
    assert p.options is not None
    assert [o.kind for o in p.options] == ["mss", "nop", "wscale", "sackOK", "TS", "nop",
                                           "nop", "sack"]
    assert p.options[4] == TcpOptionSpec("TS", tsval=7, tsecr=9)
    assert p.options[-1].blocks == ((1, 2), (3, 4))


def test_outbound_option_rules() -> None:
    # No list: no options at all. <...>: anything. No win: not checked.
    bare = one_event("+0 > . 1:1(0) ack 1").action
    anything = one_event("+0 > . 1:1(0) ack 1 <...>").action
    assert bare.options == () and bare.window is None
    assert anything.options is None
    assert one_event("+0 < - 1:1001(1000) win 9").action.flags == ""


def test_syscall_expressions() -> None:
    ev = one_event("+0 recvmsg(4, {msg_name(...)=..., msg_iov(1)=[{..., 2000}], msg_flags=0,"
                   " msg_control=[{cmsg_level=SOL_TCP, cmsg_type=TCP_CM_INQ,"
                   " cmsg_data=8000}]}, 0) = 2000")
    call = ev.action
    assert isinstance(call, SyscallSpec) and call.name == "recvmsg"
    msg = call.args[1]
    assert isinstance(msg, StructExpr)
    iov = msg.get("msg_iov")
    assert isinstance(iov, ListExpr) and iov.items[0].positional()[-1] == IntExpr(2000)
    control = msg.get("msg_control")
    assert isinstance(control, ListExpr)
    assert control.items[0].get("cmsg_data") == IntExpr(8000)
    err = one_event("+0 read(3, ..., 2000) = -1 ENOTCONN (Transport endpoint is not "
                    "connected)").action
    assert (err.result, err.errno) == (IntExpr(-1), "ENOTCONN")
    assert err.note == "Transport endpoint is not connected"
    fl = one_event("+0 fcntl(3, F_SETFL, O_RDWR|O_NONBLOCK) = 0").action
    assert fl.args[2] == BinaryExpr("|", WordExpr("O_RDWR"), WordExpr("O_NONBLOCK"))
    assert one_event("+0 fcntl(3, F_GETFL) = 0x2 (flags O_RDWR)").action.result \
        == IntExpr(2, hex=True)
    assert isinstance(one_event("+0 bind(3, ..., ...) = 0").action.args[1], EllipsisExpr)


def test_script_structure() -> None:
    script = parse_script(textwrap.dedent("""\
        // comment
        --mss=1000
        --tolerance_usecs=10000
        `./defaults.sh
        sysctl -q net.ipv4.tcp_rmem="4096 131072 $((32*1024*1024))"`
        /* a block
           comment */
           0 `nstat -n`
          +0 %{ assert tcpi_rcv_mss == 1000,
                tcpi_rcv_mss }%
        `echo done`
        """), "x.pkt")
    assert script.option("mss") == "1000" and script.option("tolerance_usecs") == "10000"
    assert isinstance(script.init_command, CommandSpec)
    assert "sysctl" in script.init_command.text
    assert [type(e.action) for e in script.events] == [CommandSpec, CodeSpec]
    assert script.events[1].line == 9
    assert script.cleanup_command == CommandSpec("echo done", 11)
    assert script.init_command.line == 4


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n+0 < . 1:1(0) ack 1\n", 2,
     "window must be specified"),
    ("0 < . 1:1(0) ack 1 win 1 <...>\n", 1, "only be used with outbound"),
    ("\n\n0 < . 1:5(3) ack 1 win 1\n", 3, "inconsistent TCP sequence"),
    ("0 < X 1:1(0) win 1\n", 1, "invalid TCP flag"),
    ("0 < . 1:1(0) win 1 <nop>\n", 1, "not padded"),
    ("* close(3) = 0\n", 1, "only be used with outbound"),
    ("+0~+1 < . 1:1(0) win 1\n", 1, "only be used with outbound"),
    ("0 `echo\n", 1, "unterminated"),
    ("0 close(3 = 0\n", 1, "expected ')'"),
    ("0 > . 1:1(0) <frob 3>\n", 1, "not supported"),
    ("0 close(3) = 0\n`a`\n1 close(4) = 0\n", 3, "only allowed first or last"),
])
def test_parse_errors_name_file_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse_script(text, "bad.pkt")
    assert exc.value.line == line
    assert str(exc.value).startswith(f"bad.pkt:{line}:")
    assert fragment in str(exc.value)


option_lists = st.lists(st.sampled_from([
    TcpOptionSpec("nop"), TcpOptionSpec("mss", 1460), TcpOptionSpec("wscale", 7),
    TcpOptionSpec("sackOK"), TcpOptionSpec("TS", tsval=123, tsecr=456),
    TcpOptionSpec("sack", blocks=((1, 1001), (2001, 3001)))]), max_size=4)


@given(flags=st.sampled_from(["S", "S.", ".", "P.", "F.", "FP.", "R", "R.", ""]),
       seq=st.integers(0, 2**32 - 70_000), length=st.integers(0, 65535),
       ack=st.integers(0, 2**32 - 1), win=st.none() | st.integers(0, 65535),
       opts=st.none() | option_lists)
def test_packet_text_round_trips(flags: str, seq: int, length: int, ack: int,
                                 win: int | None, opts: list[TcpOptionSpec] | None) -> None:
    """str(PacketSpec) is packetdrill syntax that parses back to the same packet."""
    if opts:  # pad to whole words, as a valid script must
        pad = -sum(o.length for o in opts) % 4
        opts = opts + [TcpOptionSpec("nop")] * pad
        if sum(o.length for o in opts) > 40:
            opts = None
    spec = PacketSpec(">", flags, seq, seq + length, length, ack if "." in flags else 0, win,
                      0, None if opts is None else tuple(opts))
    assert one_event("+0 " + str(spec)).action == spec


@given(a=st.integers(0, 10**6), b=st.integers(0, 10**4), c=st.integers(0, 10**6))
def test_shell_arithmetic(a: int, b: int, c: int) -> None:
    assert _shell_arith(f"4096 $(({a}*{b}+{c})) x") == f"4096 {a * b + c} x"
    assert _shell_arith(f"$((({a}+{c})*2))") == str((a + c) * 2)


# ------------------------------------------------------------------------------- runner


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_project_script_passes_modern(path: Path) -> None:
    res = run_script(path, "modern")
    assert res.outcome is Outcome.PASS, res.mismatch.format(res.path) if res.mismatch \
        else res.skip_reason


@pytest.mark.parametrize("path", [p for p in SCRIPTS if p.stem in BOTH_PROFILES],
                         ids=[p.stem for p in SCRIPTS if p.stem in BOTH_PROFILES])
def test_project_script_passes_legacy(path: Path) -> None:
    res = run_script(path, "legacy")
    assert res.outcome is Outcome.PASS, res.mismatch.format(res.path) if res.mismatch \
        else res.skip_reason


def test_project_scripts_cover_the_brief() -> None:
    names = {p.stem for p in SCRIPTS}
    for case in ("data_queue_in_order", "data_queue_duplicate", "data_queue_beyond_window",
                 "data_queue_partial_overlap", "data_queue_ofo", "sack_dsack",
                 "zero_window", "delayed_ack", "fin"):
        assert case in names


def test_wrong_window_is_reported_with_expected_and_actual(tmp_path: Path) -> None:
    res = run_text(tmp_path, """\
       +0 < P. 1:1001(1000) ack 1 win 257
       +0 > . 1:1(0) ack 1001 win 7
    """)
    assert res.outcome is Outcome.FAIL
    m = res.mismatch
    assert m.line == 11 and "win" in m.message
    assert m.expected == "> . 1:1(0) ack 1001 win 7"
    assert m.actual.startswith("> . 1:1(0) ack 1001 win ") and "win 7" not in m.actual


def test_ack_sent_too_early_is_a_timing_error(tmp_path: Path) -> None:
    # The first data of a connection is ACKed at once, not after 40 ms.
    res = run_text(tmp_path, """\
       +0 < P. 1:1001(1000) ack 1 win 257
     +.04 > . 1:1(0) ack 1001
    """)
    assert res.outcome is Outcome.FAIL and "timing error" in res.mismatch.message
    ok = run_text(tmp_path, """\
       +0 < P. 1:1001(1000) ack 1 win 257
    +0~+.04 > . 1:1(0) ack 1001
    """)
    assert ok.outcome is Outcome.PASS


def test_missing_packet_is_reported(tmp_path: Path) -> None:
    res = run_text(tmp_path, """\
       +0 > . 1:1(0) ack 1
    """)
    assert res.outcome is Outcome.FAIL
    assert "sent nothing" in res.mismatch.message and res.mismatch.actual == "(nothing)"


def test_unexpected_extra_packet_shows_up_at_the_next_expectation(tmp_path: Path) -> None:
    # A duplicate is DSACKed at once: the script forgot that ACK.
    res = run_text(tmp_path, """\
       +0 < P. 1:1001(1000) ack 1 win 257
       +0 > . 1:1(0) ack 1001
       +0 < P. 1:1001(1000) ack 1 win 257
       +0 close(4) = 0
       +0 > F. 1:1(0) ack 1001
    """)
    assert res.outcome is Outcome.FAIL
    assert "flags . instead of F." in res.mismatch.message
    assert "sack 1:1001" in res.mismatch.actual


def test_nstat_checks_use_rxpath_counters(tmp_path: Path) -> None:
    good = run_text(tmp_path, """\
       +0 `nstat -n`
       +0 < P. 1001:2001(1000) ack 1 win 257
       +0 > . 1:1(0) ack 1 <nop,nop,sack 1001:2001>
       +0 `nstat | grep TcpExtTCPOFOQueue | grep -q " 1 "`
    """)
    assert good.outcome is Outcome.PASS
    bad = run_text(tmp_path, """\
       +0 `nstat -n`
       +0 `nstat | grep TcpExtTCPOFOQueue | grep -q " 1 "`
    """)
    assert bad.outcome is Outcome.FAIL and bad.mismatch.line == 11


def test_unmodelled_command_is_skipped_not_failed(tmp_path: Path) -> None:
    res = run_text(tmp_path, """\
       +0 `ip link set dev tun0 mtu 9000`
       +0 close(4) = 0
    """)
    assert res.outcome is Outcome.PASS
    assert any("ip link" in text for _, text in res.skipped_lines)


def test_unsupported_system_call_skips_the_script(tmp_path: Path) -> None:
    res = run_text(tmp_path, """\
       +0 sendfile(4, 5, 0, 10) = 10
    """)
    assert res.outcome is Outcome.SKIP and "sendfile" in res.skip_reason


def test_blocking_read_return_time_is_checked(tmp_path: Path) -> None:
    ok = run_text(tmp_path, """\
       +0...0.050 read(4, ..., 1000) = 1000
     +.05 < P. 1:1001(1000) ack 1 win 257
    """)
    assert ok.outcome is Outcome.PASS
    late = run_text(tmp_path, """\
       +0...0.020 read(4, ..., 1000) = 1000
     +.05 < P. 1:1001(1000) ack 1 win 257
    """)
    assert late.outcome is Outcome.FAIL and "timing error" in late.mismatch.message
    never = run_text(tmp_path, """\
       +0...0.020 read(4, ..., 1000) = 1000
    """)
    assert never.outcome is Outcome.FAIL and "never returned" in never.mismatch.message


def test_next_call_waits_for_a_blocked_call_like_packetdrill(tmp_path: Path) -> None:
    """packetdrill's await_idle_thread: a call due while another blocks waits up to 1 s
    for the syscall thread; the blocked call's own return time is still checked."""
    waited = run_text(tmp_path, """\
       +0 fcntl(4, F_SETFL, O_RDWR|O_NONBLOCK) = 0
       +0 epoll_create(1) = 5
       +0 epoll_ctl(5, EPOLL_CTL_ADD, 4, {events=EPOLLIN, fd=4}) = 0
       +0...0.030 epoll_wait(5, {events=0, ptr=0}, 1, 30) = 0
    +.025 read(4, ..., 1000) = -1 EAGAIN (Resource temporarily unavailable)
    """)
    assert waited.outcome is Outcome.PASS, waited.mismatch
    stuck = run_text(tmp_path, """\
       +0...2 read(4, ..., 1000) = 1000
     +.05 getsockopt(4, SOL_SOCKET, SO_RCVBUF, [131072], [4]) = 0
    """)
    assert stuck.outcome is Outcome.FAIL
    assert "still blocked" in stuck.mismatch.message


def test_code_after_closing_the_socket_fails_like_packetdrill(tmp_path: Path) -> None:
    """packetdrill reads tcp_info with getsockopt on the socket's descriptor: once the
    script closed it, a %{ }% block cannot run."""
    res = run_text(tmp_path, """\
       +0 close(4) = 0
       +0 > F. 1:1(0) ack 1
       +0 %{ assert tcpi_state == 4, tcpi_state }%
    """)
    assert res.outcome is Outcome.FAIL
    assert "can't find getsockopt" in res.mismatch.message


def test_nonblocking_call_that_blocks_fails(tmp_path: Path) -> None:
    res = run_text(tmp_path, """\
       +0 read(4, ..., 1000) = 1000
    """)
    assert res.outcome is Outcome.FAIL and "blocked" in res.mismatch.message


def test_code_block_sees_tcp_info(tmp_path: Path) -> None:
    ok = run_text(tmp_path, """\
       +0 < P. 1:1001(1000) ack 1 win 257
       +0 > . 1:1(0) ack 1001
       +0 %{ assert tcpi_bytes_received == 1000 and tcpi_rcv_mss == 1000 }%
       +0 %{ assert SK_MEMINFO_RMEM_ALLOC > 1000, SK_MEMINFO_RMEM_ALLOC }%
    """)
    assert ok.outcome is Outcome.PASS
    bad = run_text(tmp_path, """\
       +0 %{ assert tcpi_rcv_mss == 1, tcpi_rcv_mss }%
    """)
    assert bad.outcome is Outcome.FAIL and "tcpi_rcv_mss=" in bad.mismatch.actual


def test_timestamp_echo_maps_to_our_ts_val(tmp_path: Path) -> None:
    """An inbound TS ecr names a TS val we sent (by its script value)."""
    body = """\
    0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3
   +0 setsockopt(3, SOL_SOCKET, SO_REUSEADDR, [1], 4) = 0
   +0 bind(3, ..., ...) = 0
   +0 listen(3, 1) = 0
   +0 < S 0:0(0) win 20000 <mss 1000,sackOK,TS val 100 ecr 0>
   +0 > S. 0:0(0) ack 1 <mss 1460,sackOK,TS val 500 ecr 100>
  +.1 < . 1:1(0) ack 1 win 20000 <nop,nop,TS val 200 ecr 500>
   +0 accept(3, ..., ...) = 4
   +0 < . 1:1001(1000) ack 1 win 20000 <nop,nop,TS val 300 ecr 500>
   +0 > . 1:1(0) ack 1001 <nop,nop,TS val 600 ecr 300>
"""
    assert run_text(tmp_path, body, handshake=False).outcome is Outcome.PASS
    unknown = body.replace("TS val 300 ecr 500", "TS val 300 ecr 999")
    res = run_text(tmp_path, unknown, handshake=False)
    assert res.outcome is Outcome.FAIL and "unable to infer live TS ecr" in res.mismatch.message
    # The echo we send must be the peer's TS val (ts_recent).
    wrong = body.replace("TS val 600 ecr 300", "TS val 600 ecr 200")
    res = run_text(tmp_path, wrong, handshake=False)
    assert res.outcome is Outcome.FAIL and "TS ecr 300 instead of 200" in res.mismatch.message


def test_active_open(tmp_path: Path) -> None:
    res = run_text(tmp_path, """\
        0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3
       +0 connect(3, ..., ...) = 0
       +0 > S 0:0(0) <mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 8>
     +.01 < S. 0:0(0) ack 1 win 10000 <mss 1000,sackOK,nop,nop,nop,wscale 8>
       +0 > . 1:1(0) ack 1
       +0 < P. 1:101(100) ack 1 win 300
       +0 > . 1:1(0) ack 101
       +0 read(3, ..., 1000) = 100
    """, handshake=False)
    assert res.outcome is Outcome.FAIL  # connect() blocks until the SYN-ACK: needs "..."
    res = run_text(tmp_path, """\
        0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3
       +0...0.010 connect(3, ..., ...) = 0
       +0 > S 0:0(0) <mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 8>
     +.01 < S. 0:0(0) ack 1 win 10000 <mss 1000,sackOK,nop,nop,nop,wscale 8>
       +0 > . 1:1(0) ack 1
       +0 < P. 1:101(100) ack 1 win 300
       +0 > . 1:1(0) ack 101
       +0 read(3, ..., 1000) = 100
    """, handshake=False)
    assert res.outcome is Outcome.PASS, res.mismatch


def test_runs_are_deterministic(tmp_path: Path) -> None:
    script = DRILL_DIR / "delayed_ack.pkt"
    assert run_script(script, verbose=True).log == run_script(script, verbose=True).log


def test_parse_error_is_a_failure(tmp_path: Path) -> None:
    path = tmp_path / "broken.pkt"
    path.write_text("0 < X 1:1(0) win 1\n")
    res = run_script(path)
    assert res.outcome is Outcome.FAIL and "parse error" in res.mismatch.message


# ------------------------------------------------------------------------------- CLI


def test_cli_summary_and_exit_status(tmp_path: Path) -> None:
    runner = CliRunner()
    good = str(DRILL_DIR / "fin.pkt")
    result = runner.invoke(app, ["drill", good])
    assert result.exit_code == 0, result.output
    assert f"PASS {good}" in result.output
    assert result.output.strip().endswith("1 passed, 0 failed, 0 skipped")

    bad = tmp_path / "bad.pkt"
    bad.write_text("`./defaults.sh`\n" + HANDSHAKE + "+0 > . 1:1(0) ack 1\n")
    skip = tmp_path / "skip.pkt"
    skip.write_text("`./defaults.sh`\n" + HANDSHAKE + "+0 sendfile(4, 5, 0, 1) = 1\n")
    result = runner.invoke(app, ["drill", good, str(bad), str(skip), "--profile", "legacy"])
    assert result.exit_code == 1
    assert f"FAIL {bad}:10:" in result.output
    assert "expected: > . 1:1(0) ack 1" in result.output
    assert f"SKIP {skip}" in result.output
    assert result.output.strip().endswith("1 passed, 1 failed, 1 skipped")


def test_cli_rejects_bad_options(tmp_path: Path) -> None:
    runner = CliRunner()
    script = str(DRILL_DIR / "fin.pkt")
    assert runner.invoke(app, ["drill", script, "--profile", "ancient"]).exit_code == 2
    assert runner.invoke(app, ["drill", script, "--sysctl", "nonsense"]).exit_code == 2
    assert runner.invoke(app, ["drill", script, "--sysctl", "tcp_bogus=1"]).exit_code == 2
    ok = runner.invoke(app, ["drill", script, "-s", "tcp_rmem=4096 87380 6291456"])
    assert ok.exit_code == 0, ok.output


# ------------------------------------------------------------------------------- pipeline
# The same scripts through the real actor processes (nic, cpu0, stack) in real time.
# Every project script passes in this mode; timing is matched within the script's
# tolerance, later by at most what the run measured of its own delays (see
# cli/drill/pipeline.py), never earlier.


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_project_script_passes_pipeline(path: Path) -> None:
    res = run_script(path, "modern", pipeline=True, verbose=True)
    assert res.outcome is Outcome.PASS, (res.mismatch.format(res.path) if res.mismatch
                                         else res.skip_reason, res.log)


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", [p for p in SCRIPTS if p.stem in BOTH_PROFILES],
                         ids=[p.stem for p in SCRIPTS if p.stem in BOTH_PROFILES])
def test_project_script_passes_pipeline_legacy(path: Path) -> None:
    res = run_script(path, "legacy", pipeline=True, verbose=True)
    assert res.outcome is Outcome.PASS, (res.mismatch.format(res.path) if res.mismatch
                                         else res.skip_reason, res.log)


WRONG_TIMINGS = {
    # The delayed-ACK timer fires after ato (40 ms), not 5 x ato: the ACK comes early.
    "delack_multiple": (DRILL_DIR / "delayed_ack.pkt").read_text().replace(
        " +.04 > . 201:201(0) ack 301", " +.2 > . 201:201(0) ack 301"),
    # The read returns with the data at 50 ms, before the time the script gives.
    "read_before_data": "`./defaults.sh`\n" + HANDSHAKE + """\
   +0...0.300 read(4, ..., 1000) = 1000
 +.05 < P. 1:1001(1000) ack 1 win 257
""",
    # The read can only return with the data, 300 ms after the time the script gives.
    "read_after_data": "`./defaults.sh`\n" + HANDSHAKE + """\
   +0...0.010 read(4, ..., 1000) = 1000
 +.3 < P. 1:1001(1000) ack 1 win 257
""",
}


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(WRONG_TIMINGS))
def test_pipeline_wrong_timing_fails(tmp_path: Path, case: str) -> None:
    """The pipeline's allowance for its own delays does not hide a wrong time."""
    path = tmp_path / f"{case}.pkt"
    path.write_text(WRONG_TIMINGS[case])
    assert run_script(path, "modern").outcome is Outcome.FAIL  # the model agrees
    res = run_script(path, "modern", pipeline=True, verbose=True)
    assert res.outcome is Outcome.FAIL, res.log
    assert res.mismatch is not None and "timing error" in res.mismatch.message, res.mismatch


class _StackStoppedAcrossDelack(PipelineReceiver):
    """The host does not run the stack process (SIGSTOP) from 30 to 70 ms after the
    segment at ``STOP_AFTER_SEQ`` came in: its 40 ms delayed-ACK timer fires 30 ms late."""

    STOP_AFTER_SEQ = 201
    stopped = False

    def inject(self, seg: Segment, *, gso_size: int = 0, more: bool = False) -> None:
        super().inject(seg, gso_size=gso_size, more=more)
        if seg.seq == self.STOP_AFTER_SEQ and seg.payload and self.launcher is not None:
            pid = self.launcher.pids()["stack"]
            self._timers = [threading.Timer(0.030, os.kill, (pid, signal.SIGSTOP)),
                            threading.Timer(0.070, os.kill, (pid, signal.SIGCONT))]
            for t in self._timers:
                t.start()
            self.stopped = True

    def close(self) -> None:
        for t in getattr(self, "_timers", ()):
            t.join()  # the SIGCONT has been sent before the processes are stopped
        super().close()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_pipeline_allows_a_stack_timer_that_the_host_ran_late() -> None:
    """A delayed ACK that is late because its process did not run is the emulator's own
    delay: the stack reports its late timer and the check allows it, saying so."""
    script = parse_file(DRILL_DIR / "delayed_ack.pkt")
    with _StackStoppedAcrossDelack(get_profile("modern")) as rx:
        res = DrillRunner(script, rx, verbose=True).run()
        assert rx.stopped
        stack = rx.launcher.request_stats(["stack"], timeout_s=5.0)["stack"] \
            if rx.launcher is not None else {}
    assert res.outcome is Outcome.PASS, (res.mismatch, res.log)
    late = stack["runtime"]["late_timers"]
    assert any(fired - due >= 20 * 1_000_000 for due, fired in late), late


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_pipeline_reports_a_mismatch_with_expected_and_actual(tmp_path: Path) -> None:
    path = tmp_path / "t.pkt"
    path.write_text("`./defaults.sh`\n" + HANDSHAKE.replace(
        "+0 > S. 0:0(0) ack 1 <mss", "+0 > S. 0:0(0) ack 1 win 1234 <mss"))
    res = run_script(path, "modern", pipeline=True)
    assert res.outcome is Outcome.FAIL and res.mismatch is not None
    assert res.mismatch.line == 7
    assert "win" in res.mismatch.message
    assert res.mismatch.actual is not None and "win 65535" in res.mismatch.actual


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_pipeline_processes_are_stopped_and_counters_start_at_zero() -> None:
    with PipelineReceiver(get_profile("modern")) as rx:
        fd = rx.syscall("socket", {}).ret
        call = rx.syscall("listen", {"fd": fd, "backlog": 1, "port": 8080,
                                     "laddr": rx.local_ip})
        assert call.done and call.ret == 0
        assert rx.launcher is not None
        pids = list(rx.launcher.pids().values())
        assert len(pids) == 3 and all(_pid_alive(p) for p in pids)
        # The warm-up segments' counts are not the script's.
        assert dict(rx.counters()) == {}
        # A blocking accept sleeps in the stack: reported as not done yet.
        blocked = rx.syscall("accept", {"fd": fd})
        assert not blocked.done
    assert rx.launcher is None
    assert not any(_pid_alive(p) for p in pids)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_pipeline_processes_are_stopped_when_the_run_fails() -> None:
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"), \
            PipelineReceiver(get_profile("modern")) as rx:
        fd = rx.syscall("socket", {}).ret
        rx.syscall("listen", {"fd": fd, "backlog": 1, "port": 8080, "laddr": rx.local_ip})
        assert rx.launcher is not None
        pids = list(rx.launcher.pids().values())
        raise RuntimeError("boom")
    assert len(pids) == 3 and not any(_pid_alive(p) for p in pids)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_cli_pipeline_flag() -> None:
    good = str(DRILL_DIR / "data_queue_in_order.pkt")
    result = CliRunner().invoke(app, ["drill", "--pipeline", good])
    assert result.exit_code == 0, result.output
    assert f"PASS {good}" in result.output
    assert result.output.strip().endswith("1 passed, 0 failed, 0 skipped")


def test_runner_marks_back_to_back_segments(tmp_path: Path) -> None:
    """Inbound segments at one instant (+0, no SYN) are written back to back: the
    runner tells the receiver that more follow, so a real-time one sends them together
    (dsack_ofo_dup.pkt through --pipeline)."""
    from cli.drill.model import ModelReceiver
    from cli.drill.packetdrill import parse_file
    from cli.drill.runner import DrillRunner

    seen: list[tuple[int, bool]] = []

    class Recording(ModelReceiver):
        def inject(self, seg: object, *, gso_size: int = 0, more: bool = False) -> None:
            seen.append((seg.seq, more))  # type: ignore[attr-defined]
            super().inject(seg, gso_size=gso_size, more=more)  # type: ignore[arg-type]

    path = tmp_path / "t.pkt"
    path.write_text("`./defaults.sh`\n" + HANDSHAKE + textwrap.dedent("""\
       +0 < P. 1001:2001(1000) ack 1 win 257
       +0 < P. 3001:4001(1000) ack 1 win 257
       +0 > . 1:1(0) ack 1 <nop,nop,sack 1001:2001>
       +0 > . 1:1(0) ack 1 <nop,nop,sack 3001:4001 1001:2001>
      +.1 < P. 1:1001(1000) ack 1 win 257
    """))
    res = DrillRunner(parse_file(path), Recording(get_profile("modern"))).run()
    assert res.outcome is Outcome.PASS, res.mismatch
    assert seen[-3:] == [(1001, True), (3001, False), (1, False)]
    assert (0, False) in seen and (1, False) in seen[:3]  # a SYN is never held


def test_script_declares_its_profile(tmp_path: Path) -> None:
    """``// rxpath: profile=NAME`` picks the profile when none is given; a different one
    given skips the script; a bad name fails it."""
    body = "// rxpath: profile=legacy\n`./defaults.sh`\n" + HANDSHAKE
    path = tmp_path / "declared.pkt"
    path.write_text(body)
    assert run_script(path).outcome is Outcome.PASS
    skipped = run_script(path, "modern")
    assert skipped.outcome is Outcome.SKIP and "profile=legacy" in (skipped.skip_reason or "")
    assert run_script(path, "legacy").outcome is Outcome.PASS
    path.write_text(body.replace("legacy", "vintage", 1))
    assert run_script(path).outcome is Outcome.FAIL
    # The project's scripts that hold for 6.x only say so; those for both never do.
    for p in SCRIPTS:
        if "// rxpath: profile=modern" in p.read_text():
            assert p.stem not in BOTH_PROFILES, p.stem
    assert "// rxpath: profile=modern" in (DRILL_DIR / "dsack_ofo_dup.pkt").read_text()


def test_drill_sysctl_takes_run_formats() -> None:
    """--sysctl as rxpath run takes it: blanks or commas, with or without net.ipv4."""
    script = str(DRILL_DIR / "fin.pkt")
    runner = CliRunner()
    for arg in ("tcp_rmem=4096,87380,6291456", "net.ipv4.tcp_rmem=4096 87380 6291456",
                "sysctl.tcp_rmem=4096, 87380, 6291456", "rmem_max=4194304"):
        res = runner.invoke(app, ["drill", "--sysctl", arg, script])
        assert res.exit_code == 0, (arg, res.output)
    # One parser for both commands: cli.config.parse_sysctl_assignment's messages.
    res = runner.invoke(app, ["drill", "--sysctl", "tcp_nonesuch=1", script])
    assert res.exit_code == 2 and "unknown key" in res.output, res.output
    res = runner.invoke(app, ["drill", "--sysctl", "tcp_rmem=1,2", script])
    assert res.exit_code == 2 and "tcp_rmem takes 3 values, not 2" in res.output, res.output
    res = runner.invoke(app, ["drill", "--sysctl", "tcp_dsack=yes", script])
    assert res.exit_code == 2 and "expected" in res.output, res.output
    # the kernel's name for the ms-valued field, as a script's sysctl line spells it
    res = runner.invoke(app, ["drill", "--sysctl", "net.ipv4.tcp_invalid_ratelimit=250", script])
    assert res.exit_code == 0, res.output
