"""CurveZMQ on tcp:// endpoints, private ipc directories, and key files that are wrong.

The integration tests start a real actor process over tcp on loopback and attack its
inbox with rogue DEALERs (no key, an unknown key, the wrong server key): each is refused
during the handshake, counted by the actor, and none of its messages reaches the actor,
while the launcher (a known key) works as before. An actor's own sends never reach an
impostor that binds the address of the inbox it connects to.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth
from typer.testing import CliRunner
from zmq.utils import monitor as zmq_monitor

from actors.runtime.actor import ActorSettings
from actors.runtime.addressing import (
    LAUNCHER,
    Endpoint,
    endpoints_from_topology,
    ensure_private_dir,
    free_tcp_ports,
)
from actors.runtime.curve import (
    CurveContext,
    KeyFileError,
    generate_keys,
    load_keys,
    public_key_path,
    secret_key_path,
)
from actors.runtime.launcher import PROJECT_ROOT, Launcher
from actors.runtime.mailbox import Mailbox
from cli.compose import KEYS_IN_CONTAINER, compose_services, secrets_dir_for, write_compose
from cli.config import load_scenario
from cli.main import app
from protocol import messages as msg
from protocol.envelope import EnvelopeCodec
from tests.runtime_roles import TEST_PING, TEST_PONG, make_topology


def test_this_pyzmq_has_curve() -> None:
    assert zmq.has("curve"), f"libzmq {zmq.zmq_version()} was built without CURVE"


# --- key files ------------------------------------------------------------------------------


def _tcp_endpoints(names: list[str]) -> dict[str, Endpoint]:
    ports = free_tcp_ports(len(names))
    return {n: Endpoint(f"tcp://127.0.0.1:{p}", f"tcp://127.0.0.1:{p}")
            for n, p in zip(names, ports, strict=True)}


def test_generated_keys_load_with_private_modes_and_are_kept(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    names = [LAUNCHER, "nic", "cpu0"]
    assert generate_keys(keys, names) == names
    assert stat.S_IMODE((keys / "private").stat().st_mode) == 0o700
    for n in names:
        assert stat.S_IMODE(secret_key_path(keys, n).stat().st_mode) == 0o600
        assert stat.S_IMODE(public_key_path(keys, n).stat().st_mode) == 0o644
        assert zmq.auth.load_certificate(public_key_path(keys, n))[1] is None  # public only
    eps = _tcp_endpoints(names)
    loaded = load_keys(keys, "nic", eps)
    assert set(loaded.known) == set(names)
    assert loaded.known["nic"] == loaded.public
    assert loaded.server_key(eps["cpu0"].connect) == loaded.known["cpu0"]
    assert len({*loaded.known.values()}) == 3
    # Writing again keeps every valid pair (running containers keep working) ...
    assert generate_keys(keys, names) == []
    assert load_keys(keys, "nic", eps).public == loaded.public
    # ... and replaces a broken one.
    secret_key_path(keys, "cpu0").write_text("junk\n")
    assert generate_keys(keys, names) == ["cpu0"]


def _break(keys: Path, how: str) -> Path:
    """Spoil one of ``nic``'s key files; returns the file the error must name."""
    sec, pub = secret_key_path(keys, "nic"), public_key_path(keys, "nic")
    if how == "missing secret":
        sec.unlink()
        return sec
    if how == "missing public":
        public_key_path(keys, "cpu0").unlink()
        return public_key_path(keys, "cpu0")
    if how == "not a certificate":
        sec.write_text("hello\n")
        return sec
    if how == "public file as secret":
        sec.write_text(pub.read_text())
        return sec
    if how == "short key":
        pub.write_text('curve\n    public-key = "tooshort"\n')
        return pub
    if how == "pair mismatch":
        other = secret_key_path(keys, "cpu0").read_text()
        sec.write_text(other)
        os.chmod(sec, 0o600)
        return sec
    if how == "readable by others":
        os.chmod(sec, 0o644)
        return sec
    raise AssertionError(how)


BREAKAGES = ["missing secret", "missing public", "not a certificate",
             "public file as secret", "short key", "pair mismatch", "readable by others"]


@pytest.mark.parametrize("how", BREAKAGES)
def test_a_bad_key_file_is_named(tmp_path: Path, how: str) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys, [LAUNCHER, "nic", "cpu0"])
    bad = _break(keys, how)
    with pytest.raises(KeyFileError) as err:
        load_keys(keys, "nic", _tcp_endpoints([LAUNCHER, "nic", "cpu0"]))
    assert err.value.path == bad
    assert str(bad) in str(err.value)


def _one_actor_topology(keys: Path | None) -> dict[str, Any]:
    ports = free_tcp_ports(2)
    topo = make_topology({"echo1": {"role": "echo", "port": ports[1]}})
    topo.update(transport="tcp", launcher={"port": ports[0]})
    if keys is not None:
        topo["curve"] = {"keys_dir": str(keys)}
    return topo


def test_tcp_without_keys_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="need CURVE keys"):
        ActorSettings.from_topology(_one_actor_topology(None), "echo1", tmp_path)
    ext = _one_actor_topology(None)
    ext["actors"]["echo1"]["external"] = True
    with pytest.raises(ValueError, match="need CURVE keys"):
        Launcher(ext, tmp_path)
    # The coordinator of a compose topology that lost its curve section: exit 2.
    topo = json.loads((PROJECT_ROOT / "docker" / "compose.default.topology.json").read_text())
    del topo["curve"]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(topo))
    result = CliRunner().invoke(app, ["coordinate", "--config", str(path),
                                      "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "need CURVE keys" in result.output, result.output


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["missing secret", "not a certificate"])
def test_actor_and_coordinator_exit_2_naming_the_bad_key_file(tmp_path: Path,
                                                              how: str) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys, [LAUNCHER, "nic", "cpu0"])
    sc_topo = json.loads((PROJECT_ROOT / "docker" / "compose.default.topology.json")
                         .read_text())
    generate_keys(keys, [LAUNCHER, *sc_topo["actors"]])
    sc_topo["curve"] = {"keys_dir": str(keys)}
    bad = _break(keys, how)
    topo_path = tmp_path / "topology.json"
    topo_path.write_text(json.dumps(sc_topo))
    # The container's command: rxpath actor ROLE (a real process, as in a container).
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "actor", "nic", "--config", str(topo_path),
         "--name", "nic", "--run-dir", str(tmp_path / "run")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=50)
    assert proc.returncode == 2, proc.stderr
    assert str(bad) in proc.stderr
    # The coordinator's own key broken: rxpath coordinate says so before waiting.
    bad_launcher = secret_key_path(keys, LAUNCHER)
    bad_launcher.write_text("nonsense\n")
    result = CliRunner().invoke(app, ["coordinate", "--config", str(topo_path),
                                      "--run-dir", str(tmp_path / "run"),
                                      "--ready-timeout", "1"])
    assert result.exit_code == 2, result.output
    assert str(bad_launcher) in result.output


# --- compose ---------------------------------------------------------------------------------


def test_compose_writes_keys_and_mounts_only_its_own_secret(tmp_path: Path) -> None:
    out = tmp_path / "c.yml"
    sc = load_scenario(None)
    write_compose(sc, out)
    secrets = secrets_dir_for(out)
    topo = json.loads((tmp_path / "c.topology.json").read_text())
    assert topo["curve"] == {"keys_dir": KEYS_IN_CONTAINER}
    names = [LAUNCHER, *topo["actors"]]
    # Every key the topology needs is there and loads (the container's path mapped here).
    eps = endpoints_from_topology(topo, "/nonexistent")
    for name in names:
        assert load_keys(secrets, name, eps).known.keys() == set(names)
    doc = compose_services(topo, "c.topology.json")
    for service, spec in doc["services"].items():
        name = LAUNCHER if service == "coordinator" else service
        key_mounts = [v for v in spec["volumes"] if "c.secrets" in v]
        assert key_mounts == [
            f"./c.secrets/public:{KEYS_IN_CONTAINER}/public:ro",
            f"./c.secrets/private/{name}.key_secret:"
            f"{KEYS_IN_CONTAINER}/private/{name}.key_secret:ro"], service
    text = out.read_text()
    assert text.count(".key_secret:ro") == len(names)
    before = secret_key_path(secrets, "nic").read_bytes()
    write_compose(sc, out)
    assert secret_key_path(secrets, "nic").read_bytes() == before


# --- ipc: a directory only the user can open -------------------------------------------------


def test_private_dir_is_created_0700_and_tightened(tmp_path: Path) -> None:
    d = ensure_private_dir(tmp_path / "a" / "sock")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o777)
    ensure_private_dir(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    if os.getuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
        with pytest.raises(ValueError, match="belongs to uid 65534"):
            ensure_private_dir(theirs)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_ipc_sockets_live_in_a_0700_directory(run_dir: Path) -> None:
    (run_dir / "sock").mkdir(mode=0o755)
    os.chmod(run_dir / "sock", 0o755)
    with Launcher(make_topology({"echo1": {"role": "echo"}}), run_dir) as launcher:
        assert launcher.endpoints["echo1"].bind == f"ipc://{run_dir}/sock/echo1"
        assert stat.S_IMODE((run_dir / "sock").stat().st_mode) == 0o700
        assert stat.S_ISSOCK((run_dir / "sock" / "echo1").stat().st_mode)
    assert launcher.exit_codes() == {"echo1": 0}


# --- rogue clients against a real actor ------------------------------------------------------


def _stats_until(launcher: Launcher, name: str, done: Callable[[dict[str, Any]], bool],
                 timeout_s: float = 15.0) -> dict[str, Any]:
    """Ask ``name`` for its counters until ``done`` holds (an event, with a deadline)."""
    deadline = time.monotonic() + timeout_s
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        stats = launcher.request_stats([name]).get(name, {})
        if stats and done(stats["transport"]):
            return stats
    raise AssertionError(f"{name}: counters never got there: {stats.get('transport')}")


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    ctx: zmq.Context = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def _rogue(ctx: zmq.Context, address: str,
           curve: tuple[bytes, bytes, bytes] | None = None
           ) -> zmq.Socket:
    """A DEALER claiming to be the launcher; ``curve`` = (server key, public, secret)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, LAUNCHER.encode())
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        server, public, secret = curve
        sock.setsockopt(zmq.CURVE_SERVERKEY, server)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.connect(address)
    return sock


def _forged(codec: EnvelopeCodec) -> list[bytes]:
    """What a rogue would inject: a stop "from the launcher", and a ping."""
    now = time.monotonic_ns()
    return [codec.encode(msg.STOP, LAUNCHER, 0, now, {"reason": "rogue"}),
            codec.encode(TEST_PING, LAUNCHER, 1, now, {"request_id": 666})]


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_rogue_dealers_are_refused_and_counted_while_the_launcher_works(
        run_dir: Path, zctx: zmq.Context) -> None:
    topo = _one_actor_topology(None)   # the launcher makes a key pair per actor
    codec = EnvelopeCodec()
    with Launcher(topo, run_dir) as launcher:
        keys_dir = run_dir / "keys"
        address = launcher.endpoints["echo1"].connect
        assert address.startswith("tcp://127.0.0.1:")
        # The authorized client: the launcher's ping is answered, many times over one
        # handshake (the ZAP handler runs per connection, never per message).
        for rid in range(1, 201):
            launcher.send("echo1", TEST_PING, {"request_id": rid})
        assert launcher.wait_for(lambda e: e.kind == TEST_PONG and e.body["request_id"]
                                 == 200, 20) is not None
        before = _stats_until(launcher, "echo1", lambda t: t["auth_allowed"] == 1)
        assert before["role"] == {"pings": 200}
        assert before["transport"]["auth_denied"] == 0
        assert before["transport"]["handshake_failed"] == 0

        # 1. No key at all: the handshake fails on the mechanism.
        plain = _rogue(zctx, address)
        for frame in _forged(codec):
            plain.send(frame)
        _stats_until(launcher, "echo1", lambda t: t["handshake_failed"] >= 1)
        plain.close()
        # 2. A key pair of its own, and the actor's real (public) server key: ZAP denies.
        server_key = zmq.auth.load_certificate(public_key_path(keys_dir, "echo1"))[0]
        public, secret = zmq.curve_keypair()
        unknown = _rogue(zctx, address, (server_key, public, secret))
        for frame in _forged(codec):
            unknown.send(frame)
        _stats_until(launcher, "echo1", lambda t: t["auth_denied"] >= 1)
        unknown.close()
        # 3. A guessed server key: the actor cannot even decrypt its hello.
        failed_so_far = launcher.request_stats(["echo1"])["echo1"]["transport"][
            "handshake_failed"]
        guess = _rogue(zctx, address, (zmq.curve_keypair()[0], public, secret))
        for frame in _forged(codec):
            guess.send(frame)
        _stats_until(launcher, "echo1", lambda t: t["handshake_failed"] > failed_so_far)
        # None of them could read anything either: the inbox never sent them a byte.
        for sock in (guess,):
            assert sock.poll(0) == 0
        guess.close()

        after = launcher.request_stats(["echo1"])["echo1"]
        # Nothing forged got in: no stop, no ping, not even a rejected message to count.
        assert after["role"] == {"pings": 200}
        assert after["transport"]["rejected_messages"] == {}
        assert launcher.process("echo1").running
        assert after["transport"]["auth_allowed"] == 1
        # And the launcher still works.
        launcher.send("echo1", TEST_PING, {"request_id": 201})
        assert launcher.wait_for(lambda e: e.kind == TEST_PONG and e.body["request_id"]
                                 == 201, 10) is not None
    assert launcher.exit_codes() == {"echo1": 0}
    final = launcher.final_stats["echo1"]["transport"]
    assert final["auth_denied"] >= 1 and final["handshake_failed"] >= 2
    # Each refusal was logged by the actor, naming the peer.
    log = (run_dir / "logs" / "echo1.jsonl").read_text()
    assert '"event": "auth_denied"' in log or '"event":"auth_denied"' in log


def _monitor_events(sock: zmq.Socket, ctx: zmq.Context,
                    addr: str) -> zmq.Socket:
    sock.monitor(addr, zmq.EVENT_ALL)
    mon = ctx.socket(zmq.PAIR)
    mon.connect(addr)
    return mon


def _wait_event(mon: zmq.Socket, events: int,
                timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        if mon.poll(int(left * 1000) + 1):
            ev = zmq_monitor.recv_monitor_message(mon)
            if ev["event"] & events:
                return dict(ev)
    raise AssertionError("no such monitor event")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("impostor", ["plain", "other key"])
def test_an_actor_never_sends_to_an_impostor(tmp_path: Path, impostor: str,
                                             zctx: zmq.Context) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys, ["a", "b"])
    eps = _tcp_endpoints(["a", "b"])
    # The impostor binds b's address, without b's secret key.
    fake = zctx.socket(zmq.ROUTER)
    fake.setsockopt(zmq.LINGER, 0)
    if impostor == "other key":
        fake.setsockopt(zmq.CURVE_SERVER, 1)
        fake.setsockopt(zmq.CURVE_SECRETKEY, zmq.curve_keypair()[1])
    mon = _monitor_events(fake, zctx, "inproc://fake-monitor")
    fake.bind(eps["b"].bind)
    ctx_a = CurveContext(load_keys(keys, "a", eps))
    mailbox = Mailbox("a", eps, ctx=ctx_a)
    try:
        assert mailbox.send("b", TEST_PING, {"request_id": 7, "payload": b"secret data"})
        _wait_event(mon, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        # The handshake is over (failed) and nothing came through.
        assert fake.poll(0) == 0, "the impostor received a message"
    finally:
        mailbox.close()
        ctx_a.close()
        fake.close()
        mon.close()


# --- a key is bound to its actor's name ------------------------------------------------------


def test_two_names_on_one_public_key_are_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys, [LAUNCHER, "nic", "cpu0"])
    public_key_path(keys, "cpu0").write_text(public_key_path(keys, "nic").read_text())
    with pytest.raises(KeyFileError, match="the same public-key") as err:
        load_keys(keys, LAUNCHER, _tcp_endpoints([LAUNCHER, "nic", "cpu0"]))
    assert err.value.path == public_key_path(keys, "cpu0")


def _accepted_until(mb: Mailbox, done: Callable[[Mailbox], bool],
                    timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done(mb):
        assert time.monotonic() < deadline, (mb.counters.snapshot(), list(mb.inbound))
        mb.poll(50)


@pytest.mark.timeout(60)
def test_an_envelope_must_come_from_the_key_of_its_sender(tmp_path: Path) -> None:
    """In one process: nic's key pair, with a DEALER whose routing id and envelopes say
    cpu0, gets past the handshake but not past the inbox; with its own name it does."""
    keys = tmp_path / "keys"
    names = ["stack", "nic", "cpu0"]
    generate_keys(keys, names)
    eps = _tcp_endpoints(names)
    contexts = [CurveContext(load_keys(keys, n, eps)) for n in ("stack", "nic", "nic")]
    stack = Mailbox("stack", eps, ctx=contexts[0])
    impostor = Mailbox("cpu0", eps, ctx=contexts[1])   # nic's key, cpu0's name
    nic = Mailbox("nic", eps, ctx=contexts[2])
    try:
        stack.bind()
        assert stack.authenticated
        assert impostor.send("stack", TEST_PING, {"request_id": 1})
        assert impostor.send_many("stack", TEST_PING, [{"request_id": 2},
                                                      {"request_id": 3}])
        _accepted_until(stack, lambda mb: mb.counters.rejected_messages.get(
            "sender_key_mismatch", 0) == 2)
        assert not stack.inbound and stack.counters.messages_in == 0
        # The handshake itself succeeded: the key is a known one.
        assert contexts[0].guard.snapshot()["auth_allowed"] == 1
        assert nic.send("stack", TEST_PING, {"request_id": 4})
        _accepted_until(stack, lambda mb: len(mb.inbound) == 1)
        env = stack.inbound.popleft()
        assert (env.sender, env.body["request_id"]) == ("nic", 4)
        assert stack.counters.rejected_messages == {"sender_key_mismatch": 2}
    finally:
        for mb in (stack, impostor, nic):
            mb.close()
        for ctx in contexts:
            ctx.close()


def test_an_ipc_inbox_has_no_key_to_check(run_dir: Path) -> None:
    eps = {n: Endpoint(f"ipc://{run_dir}/{n}", f"ipc://{run_dir}/{n}") for n in ("a", "b")}
    a, b = Mailbox("a", eps), Mailbox("b", eps)
    try:
        a.bind()
        assert not a.authenticated
        assert b.send("a", TEST_PING, {"request_id": 1})
        _accepted_until(a, lambda mb: len(mb.inbound) == 1)
        assert a.counters.rejected_messages == {}
    finally:
        a.close()
        b.close()


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_an_actor_with_nics_key_cannot_speak_as_cpu0(run_dir: Path) -> None:
    """A real actor process over tcp: an envelope claiming cpu0 from a connection that
    authenticated with nic's key is rejected, counted and logged, and the actor keeps
    serving; the same key claiming nic is served."""
    ports = free_tcp_ports(4)
    topo = make_topology({name: {"role": "echo", "port": port}
                          for name, port in zip(("echo1", "nic", "cpu0"), ports[1:],
                                                strict=True)})
    topo.update(transport="tcp", launcher={"port": ports[0]})
    with Launcher(topo, run_dir) as launcher:
        keys = run_dir / "keys"                 # the pairs the launcher made
        with_nic_key = [CurveContext(load_keys(keys, "nic", launcher.endpoints))
                        for _ in range(2)]
        impostor = Mailbox("cpu0", launcher.endpoints, ctx=with_nic_key[0])
        honest = Mailbox("nic", launcher.endpoints, ctx=with_nic_key[1])
        try:
            for rid in range(1, 4):
                assert impostor.send("echo1", TEST_PING, {"request_id": rid})
            after = _stats_until(launcher, "echo1", lambda t: t["rejected_messages"].get(
                "sender_key_mismatch", 0) == 3)
            assert after["role"] == {"pings": 0}
            assert launcher.process("echo1").running
            assert honest.send("echo1", TEST_PING, {"request_id": 4})
            # Wait for the answer: echo1 sends its pong to the real nic, which counts it.
            _stats_until(launcher, "nic", lambda t: t["rejected_messages"].get(
                "unhandled_kind", 0) == 1)
            served = launcher.request_stats(["echo1"])["echo1"]
        finally:
            impostor.close()
            honest.close()
            for ctx in with_nic_key:
                ctx.close()
        assert served["role"] == {"pings": 1}
        assert served["transport"]["rejected_messages"] == {"sender_key_mismatch": 3}
        # The launcher's own key still speaks for it.
        launcher.send("echo1", TEST_PING, {"request_id": 5})
        assert launcher.wait_for(lambda e: e.kind == TEST_PONG and e.body["request_id"]
                                 == 5, 10) is not None
    assert launcher.exit_codes()["echo1"] == 0
    log = (run_dir / "logs" / "echo1.jsonl").read_text()
    assert "sender_key_mismatch" in log and "the key is 'nic''s" in log
