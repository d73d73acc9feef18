"""The peer role: the remote host that sends each flow's bytes to the emulated receiver.

``sender`` is the per-flow TCP state machine, built from ``rtt`` (RTT estimator and
RTO), ``scoreboard`` (retransmission queue, SACK and loss marks) and ``congestion``
(Reno); ``host`` is the :class:`Peer` that groups a host's flows with the wire;
``impairments`` is that seeded wire; ``payload`` defines the bytes every flow carries.
All are pure: the process shell feeds them frames, timer firings and
``time.monotonic_ns()``.
"""

from actors.peer.congestion import CaState
from actors.peer.host import Peer
from actors.peer.impairments import ScriptedEvent, WireImpairments, WireLink
from actors.peer.payload import payload_bytes, verify
from actors.peer.sender import SenderConfig, TcpSender, TcpState

__all__ = [
    "CaState",
    "Peer",
    "ScriptedEvent",
    "SenderConfig",
    "TcpSender",
    "TcpState",
    "WireImpairments",
    "WireLink",
    "payload_bytes",
    "verify",
]
