"""The peer role: the remote host that sends each flow's bytes to the emulated receiver.

``sender`` holds the per-flow TCP sender and the :class:`Peer` that groups a host's flows;
``payload`` defines the bytes every flow carries; ``impairments`` is the seeded wire
between the peer and the NIC. All three are pure: the process shell feeds them frames,
timer firings and ``time.monotonic_ns()``.
"""

from actors.peer.impairments import ScriptedEvent, WireImpairments
from actors.peer.payload import payload_bytes, verify
from actors.peer.sender import CaState, Peer, SenderConfig, TcpSender, TcpState

__all__ = [
    "CaState",
    "Peer",
    "ScriptedEvent",
    "SenderConfig",
    "TcpSender",
    "TcpState",
    "WireImpairments",
    "payload_bytes",
    "verify",
]
