"""The real actor processes as a :class:`cli.drill_runner.Receiver`, in real time.

``rxpath drill --pipeline`` runs a script through the emulator itself: the NIC, one
CPU (hardirq, NAPI, ``ip_rcv``) and the stack each run as their own process, started
by a :class:`~actors.runtime.launcher.Launcher` in this process. There is no peer and
no reader actor: this process plays both.

- The remote peer: an inbound segment is encoded and sent to the NIC as a ``wire``
  message; the NIC's transmissions come back here as ``wire`` messages (the topology
  names this process as the NIC's ``wire_peer``) and are decoded and time-stamped on
  arrival.
- The user process: each system call is the same sequence of socket operations the
  model receiver uses, sent to the stack as ``sock_op`` messages, one at a time;
  ``read`` / ``recv`` / ``recvmsg`` run the real ``tcp_recvmsg`` step machine.

Time is real: the clock is the monotonic clock minus the moment the script started.
Until ``listen()`` starts the processes (with the socket options and sysctls set so
far), nothing can happen, so the clock stands still and only moves when the runner
advances it; from then on it runs.

Two rules keep a real-time run comparable to packetdrill's:

- ``inject`` returns once the stack has run ``tcp_v4_rcv`` on the segment (packetdrill
  writes to a tun device, which runs the receive path before ``write`` returns), so a
  system call that follows a packet in the script sees its effect;
- a call whose current step sleeps (``sk_wait_data``, a blocking ``accept``) and has
  had no answer within :data:`SLEEP_SETTLE_NS` is reported as blocked; it completes
  when the stack wakes it.

Outbound segments are matched within the script's tolerance, but never less than
:data:`PIPELINE_MIN_TOLERANCE_US`: a segment crosses four processes (launcher, NIC,
CPU, stack) and back, each hop a ZeroMQ message, so a few milliseconds of jitter are
the pipeline's own, not the model's.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from actors.profiles import MS, Profile, Sysctls
from actors.reader.tcp_recvmsg import RecvFlags, StepDriver, tcp_recvmsg
from actors.runtime.launcher import Launcher
from actors.stack.sock import TcpSock, TcpState
from actors.stack.tcp_ipv4 import Stack, _set_rcvbuf
from cli.config import CpuConfig, FlowConfig, NicConfig, ReaderConfig, Scenario, StackConfig
from cli.drill_model import TCP_STATE_NUMBERS, FileDesc
from cli.drill_runner import BIND_PORT, LOCAL_IP, SYMBOLS, Unsupported, errno_name
from protocol import messages as msg
from protocol.envelope import Envelope
from protocol.segment import Segment, TcpFlags
from protocol.seq import seq_sub
from protocol.wire import MalformedPacket, decode_ipv4, decode_tcp, encode

# The smallest tolerance for outbound packets and call returns in pipeline mode. A
# packet's way in (launcher -> nic -> cpu0 -> stack) and its answer's way out (stack
# -> nic -> launcher) are five ZeroMQ hops between Python processes: typically a
# millisecond or two, but tens of milliseconds when the host is busy (a test suite
# running in parallel). 25 ms covers that and still separates "at once" from a 40 ms
# delayed ACK.
PIPELINE_MIN_TOLERANCE_US = 25_000
POLL_NS = 1 * MS               # how finely the runner watches the pipeline
SLEEP_SETTLE_NS = 3 * MS       # a sleeping step unanswered this long has gone to sleep
OP_TIMEOUT_S = 5.0             # a step that is not a sleep must be answered by then
INJECT_TIMEOUT_S = 2.0         # how long inject waits for the stack to take the segment
READY_TIMEOUT_S = 30.0
STACK, NIC, CPU = "stack", "nic", "cpu0"
LISTENER_SOCK = 1              # the stack actor's first socket is its listener
WARM_UP_SEGMENTS = 3
WARM_UP_IP = "198.51.100.1"    # TEST-NET-2: never the script's remote address
WARM_UP_PORT = 9
SLEEPING_STEPS = frozenset({"sk_wait_data", "accept"})
FIN_SEEN_STATES = frozenset({TcpState.CLOSE_WAIT.value, TcpState.LAST_ACK.value,
                             TcpState.CLOSING.value, TcpState.TIME_WAIT.value})

CallResult = tuple[int, str | None, dict[str, Any]]
# A system call is a generator yielding (sock, op, args) for each stack step and
# returning (ret, errno, extra).
CallGen = Generator[tuple[int, str, dict[str, Any]], dict[str, Any], CallResult]


@dataclass
class PipelineCall:
    """A system call in progress (one step at the stack at a time) or finished."""

    gen: CallGen
    done: bool = False
    ret: int = 0
    errno: str | None = None
    end_ns: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    request_id: int | None = None   # the step waiting for the stack's answer
    step: str = ""
    sent_ns: int = 0


def _mib_total(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """The MIB counters of every process, summed (ip_rcv counts in the CPU's)."""
    total: dict[str, int] = {}
    for role in stats.values():
        for k, v in (role.get("mib") or {}).items():
            total[k] = total.get(k, 0) + int(v)
    return total


def _err(name: str, extra: dict[str, Any] | None = None) -> CallResult:
    return -1, name, extra or {}


def drill_scenario(profile: Profile, sysctls: Sysctls, *, port: int, rcvbuf: int | None,
                   rcvlowat: int, seed: int) -> Scenario:
    """One NIC queue, one CPU, the stack listening on ``LOCAL_IP:port``.

    The scenario format wants a flow and its reader; neither runs (no peer or reader
    actor is started), they only satisfy the schema.
    """
    return Scenario(
        profile=profile.name, seed=seed, duration=3600.0, sysctl=sysctls,
        nic=NicConfig(queues=1, rx_usecs=0, rx_frames=1),
        cpu=CpuConfig(count=1),
        stack=StackConfig(address=LOCAL_IP, listen_port=port, rcvbuf=rcvbuf or 0,
                          rcvlowat=rcvlowat),
        flows=(FlowConfig(),), readers=(ReaderConfig(),),
    )


def drill_topology(sc: Scenario) -> dict[str, Any]:
    """nic, cpu0 and stack; the NIC's wire peer is the launcher (this process)."""
    config = {"scenario": sc.to_dict()}
    return {
        "actors": {
            NIC: {"role": "nic", "instance": 0, "peers": [CPU],
                  "config": {**config, "wire_peer": "launcher"}},
            CPU: {"role": "cpu", "instance": 0, "peers": [NIC, STACK], "config": config},
            STACK: {"role": "stack", "instance": 0, "peers": [NIC, CPU], "config": config},
        },
        # Heartbeats are not needed (stats are asked for); traces would cost time.
        "runtime": {"heartbeat_ms": 60_000, "trace": False},
        "log": {"level": "warning"},
    }


class PipelineReceiver:
    """The actor processes on the real clock; see the module docstring.

    Use as a context manager (or call :meth:`close`): leaving it stops and reaps
    every process it started.
    """

    local_ip = LOCAL_IP

    def __init__(self, profile: Profile, *, seed: int = 1,
                 run_dir: str | Path | None = None) -> None:
        self.profile = profile
        self.seed = seed
        self.sysctls = profile.default_sysctls
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if run_dir is None:
            # Short: ipc socket paths live under it (sun_path is 108 bytes).
            self._tmp = tempfile.TemporaryDirectory(prefix="rxdrill-")
            run_dir = self._tmp.name
        self.run_dir = Path(run_dir)
        self.launcher: Launcher | None = None
        self._virtual_ns = 0          # the clock until the processes run
        self._origin_ns: int | None = None
        self._out: list[tuple[int, Segment]] = []
        self._calls: dict[int, PipelineCall] = {}  # request_id -> call waiting on it
        self._replies: dict[int, dict[str, Any]] = {}
        self._rids = itertools.count(1)
        self._fds: dict[int, FileDesc] = {}
        self._injected = 0  # segments the stack has taken, warm-up included
        self._baseline: dict[str, int] = {}
        self.errors: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> PipelineReceiver:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop every actor process (and reap it); remove the temporary run directory."""
        if self.launcher is not None:
            self.launcher.stop(timeout_s=5.0, reason="drill done")
            self.launcher = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _launch(self, port: int, rcvbuf: int | None, rcvlowat: int) -> None:
        sc = drill_scenario(self.profile, self.sysctls, port=port, rcvbuf=rcvbuf,
                            rcvlowat=rcvlowat, seed=self.seed)
        launcher = Launcher(drill_topology(sc), self.run_dir, ready_timeout_s=READY_TIMEOUT_S)
        launcher.start()
        self.launcher = launcher
        self._warm_up()
        # The script's time so far stays; from here on it is real time.
        self._origin_ns = time.monotonic_ns() - self._virtual_ns

    def _warm_up(self) -> None:
        """Send a few segments for no socket round the whole path and wait for the
        stack's resets, so the script's first packet does not pay for the processes'
        first connections and first runs of their code. What they counted becomes
        the baseline every counter is reported from."""
        assert self.launcher is not None
        for i in range(WARM_UP_SEGMENTS):
            probe = Segment(src=WARM_UP_IP, sport=WARM_UP_PORT + i, dst=LOCAL_IP,
                            dport=WARM_UP_PORT, seq=1, ack=1, flags=TcpFlags.ACK,
                            window=1000)
            self.launcher.send(NIC, msg.WIRE, {"frames": [encode(probe)]})
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not any(seg.flags & TcpFlags.RST for _, seg in self._out):
                if time.monotonic() > deadline:
                    raise RuntimeError("the pipeline did not answer its warm-up segment")
                self._pump(1)
            self._out.clear()
        stats = self._stats([NIC, CPU, STACK])
        self._injected = int(stats.get(STACK, {}).get("segments", 0))
        self._baseline = _mib_total(stats)

    @property
    def running(self) -> bool:
        return self.launcher is not None

    # ------------------------------------------------------------------ clock

    def now(self) -> int:
        if self._origin_ns is None:
            return self._virtual_ns
        return time.monotonic_ns() - self._origin_ns

    def next_event_time(self) -> int | None:
        # Anything may arrive at any moment: the runner looks again every POLL_NS.
        return self.now() + POLL_NS if self.running else None

    def advance(self, until_ns: int) -> None:
        if not self.running:
            self._virtual_ns = max(self._virtual_ns, until_ns)
            return
        while True:
            left = until_ns - self.now()
            if left <= 0:
                break
            self._pump(max(1, left // MS))
        self._pump(0)

    # ------------------------------------------------------------------ messages

    def _pump(self, timeout_ms: int) -> None:
        """Take what the actors sent (waiting up to ``timeout_ms`` for the first)."""
        assert self.launcher is not None
        for env in self.launcher.poll(timeout_ms=int(timeout_ms)):
            self._absorb(env)

    def _absorb(self, env: Envelope) -> None:
        if env.kind == msg.WIRE:
            t = self.now()
            for frame in env.body["frames"]:
                try:
                    self._out.append((t, decode_tcp(decode_ipv4(frame))))
                except MalformedPacket as err:
                    self.errors.append(f"undecodable frame from the NIC: {err}")
        elif env.kind == msg.SOCK_OP_DONE:
            rid = int(env.body["request_id"])
            call = self._calls.pop(rid, None)
            if call is not None:
                self._resume(call, dict(env.body["result"]))
            else:
                self._replies[rid] = dict(env.body["result"])
        elif env.kind == msg.LOG_EVENT and env.body.get("level") in ("error", "critical"):
            self.errors.append(f"{env.sender}: {env.body['event']} {env.body['fields']}")

    def _stats(self, names: list[str]) -> dict[str, dict[str, Any]]:
        assert self.launcher is not None
        got = self.launcher.request_stats(names, timeout_s=5.0)
        self._pump(0)  # what arrived meanwhile
        return {name: (c.get("role") or {}) for name, c in got.items()}

    def _request(self, sock: int, op: str, args: dict[str, Any]) -> int:
        assert self.launcher is not None
        rid = next(self._rids)
        self.launcher.send(STACK, msg.SOCK_OP, {"request_id": rid, "op": op, "sock": sock,
                                                "args": args})
        return rid

    def _op_now(self, sock: int, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """One step, waited for here (an operation that never sleeps)."""
        rid = self._request(sock, op, args)
        deadline = time.monotonic() + OP_TIMEOUT_S
        while rid not in self._replies:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stack did not answer {op} on socket {sock}")
            self._pump(1)
        return self._replies.pop(rid)

    # ------------------------------------------------------------------ wire

    def inject(self, seg: Segment, *, gso_size: int = 0) -> None:
        # gso_size cannot be carried: a NIC frame has none (GRO is the CPU's business).
        if not self.running:
            raise Unsupported("a packet before listen(): the pipeline starts at listen()")
        assert self.launcher is not None
        self.launcher.send(NIC, msg.WIRE, {"frames": [encode(seg)]})
        self._injected += 1
        # Wait until tcp_v4_rcv has run on it, as a tun write would (see module doc).
        deadline = time.monotonic() + INJECT_TIMEOUT_S
        while time.monotonic() < deadline:
            stack = self._stats([STACK]).get(STACK, {})
            if int(stack.get("segments", 0)) >= self._injected:
                return
            self._pump(1)
        self.errors.append(f"the stack did not take the segment {seg.describe()}")

    def take_outbound(self) -> list[tuple[int, Segment]]:
        if self.running:
            self._pump(0)
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ host settings

    def set_sysctl(self, name: str, value: str) -> bool:
        short = name.rsplit(".", 1)[-1]
        if short == "tcp_invalid_ratelimit":
            short = "tcp_invalid_ratelimit_ms"
        known = {f.name for f in fields(self.sysctls)}
        if short not in known:
            return False
        current = getattr(self.sysctls, short)
        try:
            if isinstance(current, tuple):
                parts = tuple(int(v) for v in value.split())
                if len(parts) != len(current):
                    return False
                new: Any = parts
            else:
                new = int(value, 0)
        except ValueError:
            return False
        if self.running:
            if new == current:
                return True
            raise Unsupported(f"sysctl {name} changed after listen(): the pipeline's "
                              "processes read their settings at start")
        self.sysctls = replace(self.sysctls, **{short: new})
        return True

    def counters(self) -> Mapping[str, int]:
        if not self.running:
            return {}
        total = _mib_total(self._stats([NIC, CPU, STACK]))
        return {k: d for k, v in total.items() if (d := v - self._baseline.get(k, 0))}

    # ------------------------------------------------------------------ calls

    def syscall(self, name: str, args: dict[str, Any]) -> PipelineCall:
        impl = getattr(self, f"_sys_{name}", None)
        if impl is None:
            raise Unsupported(f"{name}() is not supported in pipeline mode")
        call = PipelineCall(impl(**args))
        self._resume(call, None)
        deadline = time.monotonic() + OP_TIMEOUT_S
        while not call.done:
            waited = self.now() - call.sent_ns
            if call.step in SLEEPING_STEPS and waited >= SLEEP_SETTLE_NS:
                break  # asleep in the stack: the runner sees a blocked call
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}(): the stack did not answer step {call.step}")
            self._pump(1)
        return call

    def _resume(self, call: PipelineCall, value: dict[str, Any] | None) -> None:
        """Feed a step's answer to ``call``; send its next step, or finish it."""
        try:
            sock, op, args = call.gen.send(value) if value is not None else next(call.gen)
        except StopIteration as stop:
            call.ret, call.errno, call.extra = stop.value
            call.done = True
            call.end_ns = self.now()
            call.request_id = None
            return
        rid = self._request(sock, op, args)
        call.request_id, call.step, call.sent_ns = rid, op, self.now()
        self._calls[rid] = call

    # ------------------------------------------------------------------ fds

    def _new_fd(self, desc: FileDesc) -> int:
        fd = 3
        while fd in self._fds:
            fd += 1
        self._fds[fd] = desc
        return fd

    def _locked(self, sock: int, op: str, args: dict[str, Any]) -> CallGen:
        """lock_sock, one operation, release_sock (close releases by itself)."""
        yield sock, "lock_sock", {}
        res = yield sock, op, args
        if op != "close":
            yield sock, "release_sock", {}
        if "error" in res:
            return _err(errno_name(int(res["error"])), dict(res))
        return 0, None, dict(res)

    # ------------------------------------------------------------------ system calls

    def _sys_socket(self) -> CallGen:
        return self._new_fd(FileDesc("sock")), None, {}
        yield  # pragma: no cover

    def _sys_bind(self, fd: int, port: int) -> CallGen:
        desc = self._fds.get(fd)
        if desc is None or desc.kind != "sock":
            return _err("EBADF")
        desc.port = port
        return 0, None, {}
        yield  # pragma: no cover

    def _sys_listen(self, fd: int, backlog: int, port: int, laddr: str) -> CallGen:
        desc = self._fds.get(fd)
        if desc is None or desc.kind != "sock":
            return _err("EBADF")
        if desc.sock is not None:
            return 0, None, {}
        if self.running:
            raise Unsupported("a second listener: the pipeline's stack has one")
        # The stack actor's listener is created at start with these settings (its
        # accept backlog is the stack's default, not ``backlog``).
        self._launch(desc.port or port or BIND_PORT, desc.rcvbuf, desc.rcvlowat)
        desc.sock = LISTENER_SOCK
        return 0, None, {}
        yield  # pragma: no cover

    def _sys_accept(self, fd: int) -> CallGen:
        desc = self._fds.get(fd)
        if desc is None:
            return _err("EBADF")
        if desc.sock is None:
            return _err("EINVAL")
        res = yield desc.sock, "accept", {"nonblock": desc.nonblock}
        if "error" in res:
            return _err(errno_name(int(res["error"])))
        # A child inherits the listener's SO_RCVLOWAT.
        child = FileDesc("sock", sock=int(res["sock"]), rcvlowat=desc.rcvlowat)
        return self._new_fd(child), None, {}

    def _sys_setsockopt(self, fd: int, level: int, name: str, value: int | None) -> CallGen:
        desc = self._fds.get(fd)
        if desc is None or desc.kind != "sock":
            return _err("EBADF")
        val = int(value or 0)
        if name in ("SO_REUSEADDR", "SO_REUSEPORT", "SO_KEEPALIVE", "TCP_NODELAY"):
            return 0, None, {}
        if name == "TCP_INQ":
            desc.inq_cmsg = bool(val)
            return 0, None, {}
        if name in ("SO_RCVBUF", "SO_RCVLOWAT"):
            if name == "SO_RCVLOWAT":
                desc.rcvlowat = max(val, 1)
            if desc.sock is None:
                if name == "SO_RCVBUF":
                    desc.rcvbuf = val
                return 0, None, {}
            res = yield desc.sock, "setsockopt", {"name": name, "value": val}
            if "error" in res:
                return _err(errno_name(int(res["error"])))
            return 0, None, {}
        raise Unsupported(f"setsockopt({name}) is not modelled")

    def _sys_getsockopt(self, fd: int, level: int, name: str) -> CallGen:
        desc = self._fds.get(fd)
        if desc is None or desc.kind != "sock":
            return _err("EBADF")
        if name == "SO_RCVLOWAT":
            return 0, None, {"value": desc.rcvlowat}
        if name == "TCP_INQ":
            return 0, None, {"value": int(desc.inq_cmsg)}
        if name in ("SO_RCVBUF", "SO_ERROR"):
            if desc.sock is not None:
                info = yield desc.sock, "info", {}
                key = "rb" if name == "SO_RCVBUF" else None
                return 0, None, {"value": info["skmem"][key] if key else int(info["err"])}
            if name == "SO_ERROR":
                return 0, None, {"value": 0}
            if desc.rcvbuf is not None:
                # What sock_setsockopt would make of it, on a scratch socket.
                probe = TcpSock(net=Stack(self.profile, self.sysctls).net, sock_id=0,
                                laddr="", lport=0)
                _set_rcvbuf(probe, desc.rcvbuf)
                return 0, None, {"value": probe.rcvbuf}
            return 0, None, {"value": self.sysctls.tcp_rmem[1]}  # tcp_init_sock
        raise Unsupported(f"getsockopt({name}) is not modelled")

    def _sys_read(self, fd: int, length: int, flags: int) -> CallGen:
        desc = self._fds.get(fd)
        if desc is None:
            return _err("EBADF")
        if desc.kind != "sock":
            return _err("EINVAL")
        if desc.sock is None:
            return _err("ENOTCONN")
        rflags = RecvFlags(peek=bool(flags & SYMBOLS["MSG_PEEK"]),
                           trunc=bool(flags & SYMBOLS["MSG_TRUNC"]),
                           dontwait=bool(flags & SYMBOLS["MSG_DONTWAIT"]) or desc.nonblock,
                           waitall=bool(flags & SYMBOLS["MSG_WAITALL"]))
        driver = StepDriver(tcp_recvmsg(self.profile, self.sysctls, desc.sock, length, rflags,
                                        rcvlowat=desc.rcvlowat, timeo_ns=None,
                                        clock=self.now))
        while not driver.done:
            assert driver.next is not None
            step, args = driver.next
            if step == "cpu":  # this process's own time: none is modelled
                driver.feed({})
                continue
            args = dict(args)
            sock = int(args.pop("sock"))
            driver.feed((yield sock, step, args))
        res = driver.result
        assert res is not None
        extra: dict[str, Any] = {"data": res.data}
        if desc.inq_cmsg:
            info = yield desc.sock, "info", {}
            # tcp_inq_hint: bytes left; after a FIN, at least 1 so the reader comes back
            fin = info["state"] in FIN_SEEN_STATES
            inq = max(0, seq_sub(int(info["rcv_nxt"]), int(info["copied_seq"])) - int(fin))
            extra["cm_inq"] = 1 if inq == 0 and fin else inq
        if res.ret < 0:
            return -1, errno_name(-res.ret), extra
        return res.ret, None, extra

    def _sys_write(self, fd: int, length: int) -> CallGen:
        desc = self._fds.get(fd)
        if desc is None:
            return _err("EBADF")
        if desc.sock is None:
            return _err("EPIPE")
        ret, err, extra = yield from self._locked(desc.sock, "send", {"data": bytes(length)})
        if err:
            return ret, err, extra
        return int(extra.get("sent", 0)), None, {}

    def _sys_shutdown(self, fd: int, how: int | None) -> CallGen:
        desc = self._fds.get(fd)
        if desc is None:
            return _err("EBADF")
        if desc.sock is None:
            return _err("ENOTCONN")
        return (yield from self._locked(desc.sock, "shutdown", {"how": int(how or 0)}))

    def _sys_close(self, fd: int) -> CallGen:
        desc = self._fds.pop(fd, None)
        if desc is None:
            return _err("EBADF")
        if desc.sock is None:
            return 0, None, {}
        ret, err, _ = yield from self._locked(desc.sock, "close", {})
        return ret, err, {}

    def _sys_fcntl(self, fd: int, cmd: int | None, arg: int | None) -> CallGen:
        desc = self._fds.get(fd)
        if desc is None:
            return _err("EBADF")
        if cmd == SYMBOLS["F_GETFL"]:
            return SYMBOLS["O_RDWR"] | (SYMBOLS["O_NONBLOCK"] if desc.nonblock else 0), None, {}
        if cmd == SYMBOLS["F_SETFL"]:
            desc.nonblock = bool((arg or 0) & SYMBOLS["O_NONBLOCK"])
            return 0, None, {}
        raise Unsupported(f"fcntl command {cmd} is not modelled")
        yield  # pragma: no cover

    def _sys_ioctl(self, fd: int, request: int | None) -> CallGen:
        desc = self._fds.get(fd)
        if desc is None:
            return _err("EBADF")
        if request != SYMBOLS["SIOCINQ"]:
            raise Unsupported(f"ioctl request {request:#x} is not modelled")
        if desc.sock is None or desc.sock == LISTENER_SOCK:
            return _err("EINVAL")
        res = yield desc.sock, "inq", {}
        return 0, None, {"value": int(res["inq"])}

    # ------------------------------------------------------------------ tcp_info

    def tcp_info(self, four_tuple: tuple[str, int, str, int]) -> dict[str, int] | None:
        if not self.running:
            return None
        raddr, rport, laddr, lport = four_tuple
        socks = self._stats([STACK]).get(STACK, {}).get("sockets") or []
        mine = [s for s in socks
                if s.get("peer") == f"{raddr}:{rport}" and s.get("local") == f"{laddr}:{lport}"]
        if not mine:
            return None
        info = self._op_now(int(mine[-1]["sock"]), "info", {})
        state = TcpState(info["state"])
        skmem = info["skmem"]
        # What the stack reports of a socket (sock_info); fields it does not report
        # are absent, and a script asking for one is skipped.
        return {
            "tcpi_state": TCP_STATE_NUMBERS[state],
            "tcpi_ca_state": 0,
            "tcpi_retransmits": 0,
            "tcpi_rcv_wscale": int(info["rcv_wscale"]),
            "tcpi_snd_wscale": int(info["snd_wscale"]),
            "tcpi_ato": int(float(info["ato_ms"]) * 1000),
            "tcpi_rcv_mss": int(info["rcv_mss"]),
            "tcpi_advmss": int(info["advmss"]),
            "tcpi_rcv_rtt": int(float(info["rcv_rtt_ms"]) * 1000),
            "tcpi_rcv_space": int(info["rcv_space"]),
            "tcpi_rcv_ssthresh": int(info["rcv_ssthresh"]),
            "tcpi_rcv_wnd": int(info["rcv_wnd"]),
            "tcpi_segs_in": int(info["segs_in"]),
            "tcpi_data_segs_in": int(info["data_segs_in"]),
            "tcpi_total_retrans": 0,
            "SK_MEMINFO_RMEM_ALLOC": int(skmem["r"]),
            "SK_MEMINFO_RCVBUF": int(skmem["rb"]),
            "SK_MEMINFO_WMEM_ALLOC": int(skmem["t"]),
            "SK_MEMINFO_SNDBUF": int(skmem["tb"]),
            "SK_MEMINFO_FWD_ALLOC": int(skmem["f"]),
            "SK_MEMINFO_WMEM_QUEUED": int(skmem["w"]),
            "SK_MEMINFO_OPTMEM": int(skmem["o"]),
            "SK_MEMINFO_BACKLOG": int(skmem["bl"]),
            "SK_MEMINFO_DROPS": int(skmem["d"]),
        }
