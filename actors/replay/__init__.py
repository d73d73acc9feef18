"""A capture as the wire source: the inbound direction of a pcap, replayed to the nic at
its recorded times (open loop).

``model`` is pure (which frames, when, how they are rewritten); ``actor`` is the process
shell that sends them and learns the stack's ISN from its SYN-ACK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from actors.replay.model import FlowTarget, ReplayPlan, plan
from protocol.pcap import read_capture

if TYPE_CHECKING:
    from actors.scenario import Scenario


def flow_targets(sc: Scenario) -> list[FlowTarget]:
    """Each flow's 4-tuple in the scenario (the replayed segments are rewritten to it)."""
    return [FlowTarget(f.name, sc.peer.address, f.sport, sc.stack.address,
                       sc.stack.listen_port) for f in sc.flows]


def scenario_plan(sc: Scenario, path: str | None = None) -> ReplayPlan:
    """The replay of ``path`` (default: the scenario's ``[wire] source``) onto its flows;
    raises :class:`protocol.pcap.PcapError` for a file that cannot be used."""
    pcap = path or sc.replay
    assert pcap is not None, "not a replay scenario"
    linktype, records = read_capture(pcap)
    return plan(linktype, records, flow_targets(sc))


__all__ = ["FlowTarget", "ReplayPlan", "flow_targets", "plan", "scenario_plan"]
