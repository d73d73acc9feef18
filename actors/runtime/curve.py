"""CurveZMQ on tcp:// endpoints: every actor has a key pair, accepts only known keys.

Between containers or hosts the inboxes listen on a network, so anyone who can reach a
port could inject a message (a ``stop`` "from the launcher", a forged segment) or pose
as an inbox and read what an actor sends. On tcp:// endpoints, therefore:

- every bound socket is a CURVE server with its owner's secret key, and a ZAP handler
  lets a client finish its handshake only if its public key is one of the topology's;
- every connecting socket is a CURVE client with its own key pair and the public key
  of the inbox it connects to, so an impostor without that inbox's secret key never
  completes a handshake and never receives a message;
- a client without CURVE (a plain DEALER), with the wrong server key or with a key the
  topology does not know is refused and counted in the actor's transport counters:
  ``auth_denied`` (ZAP said no: unknown key), ``handshake_failed`` (no key, or a
  handshake that did not decrypt), beside ``auth_allowed``;
- a key is bound to its actor's name: the ZAP handler returns the name as the
  connection's user id, libzmq gives it to every message as ``User-Id``, and the inbox
  rejects an envelope whose sender is another name (``sender_key_mismatch``, see
  :mod:`actors.runtime.mailbox`), so an actor cannot pose as another with its own key.

ipc:// endpoints stay plain: their sockets live in a directory only the user can open
(:func:`actors.runtime.addressing.ensure_private_dir`).

Keys are files in the format ``zmq.auth.create_certificates`` writes, laid out as::

    KEYS_DIR/public/<name>.key            public key of every actor and of `launcher`
    KEYS_DIR/private/<name>.key_secret    one actor's key pair (mode 0600)

and the topology names the directory: ``"curve": {"keys_dir": KEYS_DIR}``. A container
needs ``public/`` and its own ``private/<name>.key_secret`` only (``rxpath compose``
mounts exactly those, read-only). A missing or malformed key file is a
:class:`KeyFileError` (a ValueError) naming the file.

The ZAP handler and the handshake watcher share one thread per process, which wakes
only when a connection is being set up (one ZAP request and one monitor event per
handshake); a message on an established connection never reaches it. What CURVE costs
per message is the encryption itself, in libzmq's I/O thread.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.utils import monitor as zmq_monitor
from zmq.utils import z85

from actors.runtime.addressing import Endpoint

PUBLIC_DIR = "public"
PRIVATE_DIR = "private"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
ZAP_DOMAIN = b"rxpath"
_ZAP_ENDPOINT = "inproc://zeromq.zap.01"   # fixed by the ZAP specification (RFC 27)
_Z85_KEY_LEN = 40                           # a 32-byte Curve25519 key in Z85
# Handshakes the watcher counts as failed: no CURVE, or one that does not decrypt. A ZAP
# denial (EVENT_HANDSHAKE_FAILED_AUTH) is counted by the handler, once, as auth_denied.
_FAILED_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
_LOG_FIRST = 20


class KeyFileError(ValueError):
    """A key file that is missing, unreadable or not a CURVE certificate."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"CURVE key file {path}: {problem}")
        self.path = path


def require_curve() -> None:
    if not zmq.has("curve"):
        raise ValueError(f"this pyzmq/libzmq ({zmq.zmq_version()}) has no CURVE support; "
                         "tcp:// endpoints need it")


def public_key_path(keys_dir: Path, name: str) -> Path:
    return keys_dir / PUBLIC_DIR / f"{name}{PUBLIC_SUFFIX}"


def secret_key_path(keys_dir: Path, name: str) -> Path:
    return keys_dir / PRIVATE_DIR / f"{name}{SECRET_SUFFIX}"


def generate_keys(keys_dir: Path, names: Iterable[str]) -> list[str]:
    """A key pair for each of ``names`` that has none yet (an existing valid pair is
    kept, so running `rxpath compose` again does not lock out running containers).
    Returns the names that got a new pair."""
    require_curve()
    public, private = keys_dir / PUBLIC_DIR, keys_dir / PRIVATE_DIR
    for d, mode in ((keys_dir, 0o755), (public, 0o755), (private, 0o700)):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, mode)
    made = []
    for name in names:
        pub, sec = public_key_path(keys_dir, name), secret_key_path(keys_dir, name)
        if pub.exists() and sec.exists():
            try:
                if _load(sec, secret=True)[0] == _load(pub, secret=False)[0]:
                    continue
            except KeyFileError:
                pass  # unusable: replace it
        # Both files are written in private/ (0700: nobody else can look in meanwhile),
        # then the public one moves to public/.
        made_pub, made_sec = zmq.auth.create_certificates(private, name)
        os.chmod(made_sec, 0o600)
        os.chmod(made_pub, 0o644)
        os.replace(made_pub, pub)
        made.append(name)
    return made


def _load(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        mode = path.stat().st_mode
        public_key, secret_key = zmq.auth.load_certificate(path)
    except FileNotFoundError:
        raise KeyFileError(path, "missing" + (" (rxpath compose writes it)" if secret
                                              else "")) from None
    except OSError as exc:
        raise KeyFileError(path, f"cannot be read ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(path, "no public-key line: expected a certificate as "
                           "zmq.auth.create_certificates writes") from None
    if not _valid_z85_key(public_key):
        raise KeyFileError(path, f"public-key is not a {_Z85_KEY_LEN}-character Z85 key")
    if secret:
        if secret_key is None:
            raise KeyFileError(path, "no secret-key line (is this the public .key file?)")
        if not _valid_z85_key(secret_key):
            raise KeyFileError(path, f"secret-key is not a {_Z85_KEY_LEN}-character Z85 key")
        if zmq.curve_public(secret_key) != public_key:
            raise KeyFileError(path, "its secret-key does not belong to its public-key")
        if mode & 0o077:
            raise KeyFileError(path, f"mode {stat.filemode(mode)} lets others read the "
                               "secret key (chmod 600)")
    return public_key, secret_key


def _valid_z85_key(key: bytes | None) -> bool:
    if key is None or len(key) != _Z85_KEY_LEN:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


@dataclass(frozen=True)
class CurveKeys:
    """One process's key pair and the public key of every endpoint it may meet."""

    name: str
    public: bytes                       # Z85
    secret: bytes                       # Z85
    known: Mapping[str, bytes]          # name -> public key (Z85)
    server_keys: Mapping[str, bytes]    # connect address -> that inbox's public key

    def server_key(self, address: str) -> bytes:
        try:
            return self.server_keys[address]
        except KeyError:
            raise ValueError(f"{self.name}: no CURVE key for {address}") from None


def keys_dir_of(topology: Mapping[str, Any]) -> Path | None:
    """The topology's ``curve.keys_dir``, or None when it has no ``curve`` section."""
    section = topology.get("curve")
    if not section:
        return None
    if not isinstance(section, Mapping) or not isinstance(section.get("keys_dir"), str):
        raise ValueError("topology: curve must be {\"keys_dir\": DIRECTORY}")
    return Path(section["keys_dir"])


def load_keys(keys_dir: Path, name: str, endpoints: Mapping[str, Endpoint]) -> CurveKeys:
    """``name``'s key pair and the public keys of every name in ``endpoints`` (which
    includes the launcher); raises :class:`KeyFileError` naming the first bad file."""
    require_curve()
    known = {n: _load(public_key_path(keys_dir, n), secret=False)[0] for n in endpoints}
    # The key is what names a client (its ZAP user id): two names on one key would let
    # either speak as the other.
    owner: dict[bytes, str] = {}
    for n, key in known.items():
        if key in owner:
            raise KeyFileError(public_key_path(keys_dir, n), f"the same public-key as "
                               f"{public_key_path(keys_dir, owner[key])}: each actor needs "
                               "its own pair")
        owner[key] = n
    sec_path = secret_key_path(keys_dir, name)
    public, secret = _load(sec_path, secret=True)
    assert secret is not None
    if known.get(name, public) != public:
        raise KeyFileError(sec_path, f"its public-key differs from "
                           f"{public_key_path(keys_dir, name)}")
    server_keys = {ep.connect: known[n] for n, ep in endpoints.items()}
    return CurveKeys(name, public, secret, known, server_keys)


def uses_tcp(endpoints: Iterable[Endpoint]) -> bool:
    return any(ep.bind.startswith("tcp://") or ep.connect.startswith("tcp://")
               for ep in endpoints)


def keys_for(topology: Mapping[str, Any], name: str, endpoints: Mapping[str, Endpoint],
             used: Iterable[str]) -> CurveKeys | None:
    """``name``'s keys from the topology's ``curve`` section; None without one, unless
    an endpoint in ``used`` is tcp://: never listen on or talk to a network port
    without CURVE (fail closed)."""
    keys_dir = keys_dir_of(topology)
    if keys_dir is None:
        if uses_tcp(endpoints[n] for n in used):
            raise ValueError(f"{name}: tcp:// endpoints need CURVE keys, and the topology "
                             "has no curve section (rxpath compose writes one)")
        return None
    return load_keys(keys_dir, name, endpoints)


# --- sockets ------------------------------------------------------------------------------


class CurveSocket(zmq.Socket):
    """A socket that turns CURVE on when it binds or connects a tcp:// address: the
    options must be set before bind/connect, and only then is the address known."""

    context: CurveContext

    def bind(self, addr: str) -> Any:
        if addr.startswith("tcp://"):
            keys = self.context.keys
            self.setsockopt(zmq.CURVE_SERVER, 1)
            self.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
            self.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
            # Fail closed should the ZAP handler ever be missing (a draft option: a
            # libzmq without drafts refuses it, and then the guard's handler is the rule).
            with contextlib.suppress(zmq.ZMQError, AttributeError):
                self.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
            self.context.guard.watch(self)
        return super().bind(addr)

    def connect(self, addr: str) -> Any:
        if addr.startswith("tcp://"):
            keys = self.context.keys
            self.setsockopt(zmq.CURVE_SERVERKEY, keys.server_key(addr))
            self.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
            self.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        return super().connect(addr)


class CurveContext(zmq.Context):
    """A context whose sockets use CURVE on tcp:// (see :class:`CurveSocket`), with the
    ZAP handler running; give it to a Mailbox, and :meth:`close` it after the mailbox."""

    _socket_class = CurveSocket
    keys: CurveKeys
    guard: CurveGuard

    def __init__(self, keys: CurveKeys, log: Any = None) -> None:
        super().__init__()
        self.keys = keys
        self.guard = CurveGuard(self, keys.known, log=log)

    def close(self) -> None:
        self.guard.stop()
        # Every socket is closed by now in a clean exit; destroy also closes any that
        # an error left open, which term would wait for forever.
        self.destroy(linger=0)


class CurveGuard:
    """The ZAP handler (allow a known public key, deny any other) and the watcher of
    failed handshakes on the watched server sockets, in one daemon thread."""

    def __init__(self, ctx: zmq.Context, known: Mapping[str, bytes],
                 log: Any = None) -> None:
        self.ctx = ctx
        self.log = log
        # Raw public key -> the one name it authenticates (the connection's user id).
        self.allowed = {z85.decode(key): name for name, key in known.items()}
        self.counters = {"auth_allowed": 0, "auth_denied": 0, "handshake_failed": 0}
        self._monitors = itertools.count()
        self._ctl_addr = f"inproc://rxpath-curve-ctl-{id(self):x}"
        self._ctl = ctx.socket(zmq.PAIR, socket_class=zmq.Socket)
        self._ctl.bind(self._ctl_addr)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="curve-guard", daemon=True)
        self._thread.start()
        # The ZAP endpoint must be bound before any server socket binds.
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"CURVE guard did not start: {self._error!r}")

    def snapshot(self) -> dict[str, int]:
        return dict(self.counters)

    def watch(self, sock: zmq.Socket) -> None:
        """Count ``sock``'s failed handshakes. Returns once the watcher listens, so no
        event of the coming bind is missed."""
        addr = f"inproc://rxpath-curve-monitor-{id(self):x}-{next(self._monitors)}"
        sock.monitor(addr, _FAILED_EVENTS)
        self._ctl.send(addr.encode())
        if not self._ctl.poll(10_000):
            raise RuntimeError("CURVE guard does not answer")
        self._ctl.recv()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._ctl.send(b"")
            self._thread.join(5)
        self._ctl.close(linger=0)

    def _note(self, counter: str, **fields: Any) -> None:
        n = self.counters[counter] = self.counters[counter] + 1
        if self.log is not None and counter != "auth_allowed" and n <= _LOG_FIRST:
            self.log.warning(counter, count=n, **fields)

    def _run(self) -> None:
        try:
            zap = self.ctx.socket(zmq.REP, socket_class=zmq.Socket)
            zap.bind(_ZAP_ENDPOINT)
            ctl = self.ctx.socket(zmq.PAIR, socket_class=zmq.Socket)
            ctl.connect(self._ctl_addr)
        except BaseException as exc:  # reported by __init__
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(zap, zmq.POLLIN)
        poller.register(ctl, zmq.POLLIN)
        monitors: list[zmq.Socket] = []
        try:
            while True:
                ready = dict(poller.poll())
                if zap in ready:
                    zap.send_multipart(self._zap_reply(zap.recv_multipart()))
                if ctl in ready:
                    addr = ctl.recv()
                    if not addr:
                        return
                    mon = self.ctx.socket(zmq.PAIR, socket_class=zmq.Socket)
                    mon.connect(addr.decode())
                    poller.register(mon, zmq.POLLIN)
                    monitors.append(mon)
                    ctl.send(b"ok")
                for mon in monitors:
                    if mon in ready:
                        event = zmq_monitor.recv_monitor_message(mon)
                        if event["event"] & _FAILED_EVENTS:
                            self._note("handshake_failed",
                                       peer=event["endpoint"].decode(errors="replace"),
                                       error=event["value"])
        finally:
            for sock in (zap, ctl, *monitors):
                sock.close(linger=0)

    def _zap_reply(self, frames: list[bytes]) -> list[bytes]:
        """RFC 27: [version, request id, domain, address, identity, mechanism,
        credentials...] -> [version, request id, status, text, user id, metadata]."""
        if len(frames) < 6:
            self._note("auth_denied", reason="malformed ZAP request")
            return [b"1.0", frames[1] if len(frames) > 1 else b"", b"400",
                    b"malformed request", b"", b""]
        version, request_id, _domain, address, _identity, mechanism = frames[:6]
        name = (self.allowed.get(frames[6]) if mechanism == b"CURVE" and len(frames) == 7
                else None)
        if name is None:
            self._note("auth_denied", peer=address.decode(errors="replace"),
                       mechanism=mechanism.decode(errors="replace"))
            return [version, request_id, b"400", b"unknown key", b"", b""]
        self._note("auth_allowed")
        # The user id becomes every message's User-Id, which the inbox checks the
        # envelope's sender against.
        return [version, request_id, b"200", b"OK", name.encode(), b""]


def curve_context(keys: CurveKeys | None, log: Any = None) -> CurveContext | None:
    """A context for a mailbox: CURVE when there are keys, else None (the mailbox makes
    its own plain context)."""
    return CurveContext(keys, log=log) if keys is not None else None
