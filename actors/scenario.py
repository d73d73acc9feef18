"""The scenario of one run, as plain dataclasses every actor reads.

The launcher builds a :class:`Scenario` from a checked scenario file (``cli/config.py``
parses and validates TOML), hands it to each actor as :meth:`Scenario.to_dict` data, and
each actor rebuilds it with :meth:`Scenario.from_dict`. Nothing here validates: the
values were checked once, where the user wrote them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, TypeVar

from actors.nic.model import MICROSOFT_RSS_KEY
from actors.peer.impairments import EventAction, FlowKey, ScriptedEvent, WireImpairments
from actors.profiles import MS, US, Profile, Sysctls, get_profile
from actors.stack.skb import DeviceKind, so_rcvbuf

DEFAULT_SOURCE = "<default>"

LogLevel = Literal["debug", "info", "warning", "error"]
ProbeStyle = Literal["linux", "data"]
EventMatch = Literal["data", "any"]

LOG_LEVELS: tuple[str, ...] = typing.get_args(LogLevel)
PROBE_STYLES: tuple[str, ...] = typing.get_args(ProbeStyle)
EVENT_ACTIONS: tuple[str, ...] = typing.get_args(EventAction)
EVENT_MATCHES: tuple[str, ...] = typing.get_args(EventMatch)


def ms_to_ns(ms: float) -> int:
    return round(ms * MS)


def us_to_ns(us: float) -> int:
    return round(us * US)


@dataclass(frozen=True, slots=True)
class NicConfig:
    """The NIC: RX queues (one descriptor ring each), interrupt coalescing, RSS."""

    queues: int = 2
    ring_size: int = 256
    rx_usecs: int = 0
    rx_frames: int = 1
    rss_key: bytes = MICROSOFT_RSS_KEY
    cost_per_frame_us: float = 0.0
    # What the frames arrive through, which sizes each skb (actors.stack.skb.device_skb):
    # "nic" an Ethernet NIC's RX ring, "tun" a tun device (packetdrill's injection).
    device: DeviceKind = "nic"
    # Generic receive offload (ethtool -K gro): each NAPI poll merges a flow's in-order
    # segments into one skb (actors.cpu.gro). On by default, as register_netdevice sets
    # NETIF_F_GRO on every device; a scenario about per-segment work turns it off. A tun
    # device has no NAPI GRO here.
    gro: bool = True


@dataclass(frozen=True, slots=True)
class CpuConfig:
    """The CPUs that take the NIC's interrupts and run NAPI; costs are emulated work."""

    count: int = 2
    cost_per_segment_us: float = 0.0
    cost_per_byte_ns: float = 0.0


@dataclass(frozen=True, slots=True)
class StackConfig:
    """The receiving host's TCP: the listening socket and its per-segment costs."""

    cost_per_segment_us: float = 0.0
    cost_per_byte_ns: float = 0.0
    rcvbuf: int = 0  # SO_RCVBUF as passed to setsockopt; 0 = not set
    rcvlowat: int = 1
    listen_port: int = 5001  # 0: no listener at start (a task opens one: inet_listen)
    listen_backlog: int = 128  # listen()'s backlog (the kernel caps it at somaxconn)
    address: str = "10.0.0.2"

    @property
    def rcvbuf_locked(self) -> bool:
        """SO_RCVBUF sets SOCK_RCVBUF_LOCK, which turns receive autotuning off."""
        return self.rcvbuf > 0

    def sk_rcvbuf(self, sysctls: Sysctls) -> int:
        """The initial ``sk_rcvbuf``: ``tcp_rmem[1]``, or what SO_RCVBUF makes of the value
        (clamped to net.core.rmem_max, doubled, at least SOCK_MIN_RCVBUF)."""
        if self.rcvbuf == 0:
            return sysctls.tcp_rmem[1]
        return so_rcvbuf(self.rcvbuf, sysctls.rmem_max)


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """The remote host that sends every flow (the active-open side)."""

    address: str = "10.0.0.1"
    mss: int = 1460
    wscale: int = 7
    sack: bool = True
    timestamps: bool = True
    probe_style: ProbeStyle = "linux"
    resegment: bool = True


@dataclass(frozen=True, slots=True)
class FlowConfig:
    """One TCP connection from the peer to the stack's listening port."""

    name: str = "f1"
    bytes: int = 1_000_000
    sport: int = 40001
    start_ms: float = 0.0
    reader: str = "r1"

    @property
    def start_ns(self) -> int:
        return ms_to_ns(self.start_ms)


@dataclass(frozen=True, slots=True)
class ScriptedEventConfig:
    """A deterministic impairment of the ``index``-th matching frame (counted from 1).

    ``flow`` None applies it to every flow, each counted separately. ``hold_segments`` and
    ``max_hold_ms`` apply to ``hold`` only, ``delay_ms`` to ``delay`` only.
    """

    action: EventAction
    index: int
    flow: str | None = None
    match: EventMatch = "data"
    hold_segments: int = 0
    delay_ms: float = 0.0
    max_hold_ms: float | None = None

    def to_event(self, flow_key: FlowKey | None) -> ScriptedEvent:
        """The :class:`ScriptedEvent`, with the flow name resolved to the frames' 4-tuple."""
        return ScriptedEvent(
            action=self.action, nth=self.index, flow=flow_key, match=self.match,
            hold_segments=self.hold_segments, delay_ns=ms_to_ns(self.delay_ms),
            max_hold_ns=None if self.max_hold_ms is None else ms_to_ns(self.max_hold_ms))


@dataclass(frozen=True, slots=True)
class ImpairmentsConfig:
    """The data path, peer -> NIC (netem-like); rates are probabilities per frame."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder_gap_ms: float = 1.0
    events: tuple[ScriptedEventConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class AckImpairmentsConfig:
    """The ACK path, NIC -> peer: losing ACKs is what matters there."""

    loss: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    events: tuple[ScriptedEventConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    """A user process reading one flow with ``read()`` (``tcp_recvmsg``) in a loop, or,
    given ``flows``, a server reading several with epoll (``flow`` is then the first)."""

    name: str = "r1"
    flow: str = "f1"
    flows: tuple[str, ...] = ()  # an epoll server's connections; () reads ``flow`` alone
    read_size: int = 65536
    think_us: float = 0.0  # between reads, socket lock not held
    hold_lock_us: float = 0.0  # inside a read, with the socket lock held (a slow reader)
    copy_ns_per_byte: float = 0.0
    nonblocking: bool = False
    waitall: bool = False
    start_ms: float = 0.0

    @property
    def served_flows(self) -> tuple[str, ...]:
        """Every flow this process reads."""
        return self.flows or (self.flow,)

    @property
    def think_ns(self) -> int:
        return us_to_ns(self.think_us)

    @property
    def hold_lock_ns(self) -> int:
        return us_to_ns(self.hold_lock_us)

    @property
    def start_ns(self) -> int:
        return ms_to_ns(self.start_ms)


@dataclass(frozen=True, slots=True)
class LinuxSenderConfig:
    """A real Linux sender in the run's network namespace (``[[linux_senders]]``): the
    built-in program (``command`` empty), one connection per flow, or any command for one
    flow (``{src} {sport} {dst} {dport} {bytes} {file}`` are filled in; ``{file}`` holds
    the flow's payload). With ``file`` (absolute once validated) every flow of the sender
    carries that file's bytes instead of the generated payload, and is as long as it."""

    name: str = "s1"
    flows: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    file: str = ""


@dataclass(frozen=True, slots=True)
class WireConfig:
    """``[wire]``: where the NIC's inbound frames come from. ``source`` "peer" is the
    emulated peer (or ``[[linux_senders]]``); ``"pcap:FILE"`` replays the inbound
    direction of a capture at its recorded times (``FILE`` absolute once validated)."""

    source: str = "peer"

    @property
    def pcap(self) -> str | None:
        """The capture to replay, or None."""
        return self.source[len(PCAP_PREFIX):] if self.source.startswith(PCAP_PREFIX) else None


PCAP_PREFIX = "pcap:"


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: LogLevel = "info"


CHAOS_ACTIONS = ("kill", "stop", "cont", "cut_link", "delay_link")
CHAOS_ROLES = ("peer", "nic", "cpu", "stack", "reader")


@dataclass(frozen=True, slots=True)
class ChaosEventConfig:
    """One scheduled fault: ``at_ms`` after traffic starts, ``action`` on ``target`` (an
    actor name like ``cpu0`` or ``r1``, or a role, meaning one of its actors chosen by
    the seed; a link is ``"a->b"``)."""

    at_ms: float = 0.0
    action: str = "kill"
    target: str = ""
    delay_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    """``[chaos]``: seeded random kills of ``kill`` roles every ``every_ms``, and/or an
    explicit ``[[chaos.schedule]]``."""

    kill: tuple[str, ...] = ()
    every_ms: float = 0.0
    seed: int | None = None
    schedule: tuple[ChaosEventConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class Scenario:
    """One run description. ``to_dict()`` gives it back, defaults filled in."""

    profile: str = "legacy"
    seed: int = 1
    duration: float = 60.0
    description: str = ""
    sysctl: Sysctls = field(default_factory=Sysctls)
    nic: NicConfig = field(default_factory=NicConfig)
    cpu: CpuConfig = field(default_factory=CpuConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    peer: PeerConfig = field(default_factory=PeerConfig)
    flows: tuple[FlowConfig, ...] = ()
    impairments: ImpairmentsConfig = field(default_factory=ImpairmentsConfig)
    ack_impairments: AckImpairmentsConfig = field(default_factory=AckImpairmentsConfig)
    readers: tuple[ReaderConfig, ...] = ()
    log: LogConfig = field(default_factory=LogConfig)
    chaos: ChaosConfig = field(default_factory=ChaosConfig)
    linux_senders: tuple[LinuxSenderConfig, ...] = ()
    wire: WireConfig = field(default_factory=WireConfig)
    source: str = field(default=DEFAULT_SOURCE, compare=False)

    @property
    def kernel_profile(self) -> Profile:
        return get_profile(self.profile)

    @property
    def duration_ns(self) -> int:
        return round(self.duration * 1_000_000_000)

    @property
    def queue_to_cpu(self) -> tuple[int, ...]:
        """The CPU that takes each RX queue's interrupt (round robin, as irqbalance-free
        drivers spread them)."""
        return tuple(q % self.cpu.count for q in range(self.nic.queues))

    @property
    def real_senders(self) -> bool:
        """The flows come from real Linux sockets over a TUN device, not the peer actor."""
        return bool(self.linux_senders)

    @property
    def replay(self) -> str | None:
        """The capture whose inbound direction the flows replay (``[wire] source``)."""
        return self.wire.pcap

    def flow(self, name: str) -> FlowConfig:
        for flow in self.flows:
            if flow.name == name:
                return flow
        raise KeyError(name)

    def sender_file(self, flow: str) -> str | None:
        """The file a real sender sends as ``flow``'s bytes, if it sends one."""
        return next((s.file for s in self.linux_senders if s.file and flow in s.flows), None)

    def reader(self, name: str) -> ReaderConfig:
        for reader in self.readers:
            if reader.name == name:
                return reader
        raise KeyError(name)

    def readers_of(self, flow: str) -> tuple[ReaderConfig, ...]:
        return tuple(r for r in self.readers if flow in r.served_flows)

    def four_tuple(self, flow: str) -> FlowKey:
        """(src, sport, dst, dport) of the flow's data segments, peer -> stack."""
        f = self.flow(flow)
        return (self.peer.address, f.sport, self.stack.address, self.stack.listen_port)

    def seed_for(self, label: str) -> int:
        """A seed for one consumer of randomness, derived from ``seed`` and a label, so
        adding a consumer does not change the draws of the others."""
        digest = hashlib.sha256(f"{self.seed}:{label}".encode()).digest()
        return int.from_bytes(digest[:8], "big")

    def wire_impairments(self) -> WireImpairments:
        """The data path's :class:`WireImpairments`, seeded from the scenario seed."""
        imp = self.impairments
        return WireImpairments(
            loss=imp.loss, reorder=imp.reorder, reorder_gap_ns=ms_to_ns(imp.reorder_gap_ms),
            duplicate=imp.duplicate, delay_ns=ms_to_ns(imp.delay_ms),
            jitter_ns=ms_to_ns(imp.jitter_ms), corrupt=imp.corrupt,
            seed=self.seed_for("wire"),
            events=tuple(e.to_event(None if e.flow is None else self.four_tuple(e.flow))
                         for e in imp.events))

    def ack_wire_impairments(self) -> WireImpairments:
        """The ACK path's :class:`WireImpairments`; its frames carry the reversed 4-tuple."""
        imp = self.ack_impairments
        events = []
        for e in imp.events:
            key = None
            if e.flow is not None:
                src, sport, dst, dport = self.four_tuple(e.flow)
                key = (dst, dport, src, sport)
            events.append(e.to_event(key))
        return WireImpairments.ack_path(
            loss=imp.loss, delay_ns=ms_to_ns(imp.delay_ms), jitter_ns=ms_to_ns(imp.jitter_ms),
            seed=self.seed_for("ack-wire"), events=tuple(events))

    def to_dict(self) -> dict[str, Any]:
        """The effective scenario as plain JSON-able data in the file's own schema, every
        default filled in; :meth:`from_dict` gives it back, and so does
        ``cli.config.parse_scenario`` of a TOML dump of it."""
        out = _dataclass_to_dict(self)
        del out["source"]
        if not out["linux_senders"]:
            del out["linux_senders"]  # the emulated peer: files and topologies as before
        for sender in out.get("linux_senders", []):
            if not sender.get("file"):
                sender.pop("file", None)  # "" is "no file": a file must not say file = ""
        if out["wire"] == {"source": "peer"}:
            del out["wire"]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> Scenario:
        """Rebuild a scenario from :meth:`to_dict` data, trusting it: a key left out takes
        the dataclass default, and nothing is range-checked (``cli.config`` does that
        where a user wrote the values). An unknown key is a TypeError."""
        return replace(_rebuild(cls, data), source=source)


T = TypeVar("T")
_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def _field_types(cls: type) -> dict[str, Any]:
    hints = _FIELD_TYPES.get(cls)
    if hints is None:
        hints = _FIELD_TYPES[cls] = typing.get_type_hints(cls)
    return hints


def _rebuild(cls: type[T], data: Mapping[str, Any]) -> T:
    types_ = _field_types(cls)
    values = {key: _from_plain(types_.get(key, Any), value) for key, value in data.items()}
    if cls is ReaderConfig and values.get("flows") and "flow" not in values:
        values["flow"] = values["flows"][0]  # written without it: see _dataclass_to_dict
    return cls(**values)


def _from_plain(hint: Any, value: Any) -> Any:
    """The inverse of :func:`_plain` for one field, guided by its type."""
    if dataclasses.is_dataclass(hint):
        return _rebuild(typing.cast(type, hint), value)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_plain(args[0], v) for v in value)
        return tuple(value)
    if origin in (typing.Union, types.UnionType) and value is not None:
        (inner,) = (a for a in args if a is not type(None))
        return _from_plain(inner, value)
    if hint is bytes:
        return bytes.fromhex(value)
    if hint is float:
        return float(value)
    return value


def _dataclass_to_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(obj, ScriptedEventConfig) and not event_key_applies(obj.action, f.name):
            continue
        if value is None:
            continue  # TOML has no null: an absent key means "not set"
        if isinstance(obj, ReaderConfig) and f.name == ("flow" if obj.flows else "flows"):
            continue  # a reader has `flow` or, as an epoll server, `flows`: never both
        out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return _dataclass_to_dict(value)
    return value


def event_key_applies(action: str, key: str) -> bool:
    """Whether a scripted event's key means anything for its action."""
    if key in ("hold_segments", "max_hold_ms"):
        return action == "hold"
    if key == "delay_ms":
        return action == "delay"
    return True
