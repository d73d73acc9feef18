"""A stand-in neighbour for the shell tests: a real actor process that forwards every
message of the kinds it is told to the launcher, unchanged, so a test driving one role
from the launcher sees exactly what that role sent to each neighbour."""

from __future__ import annotations

from typing import Any

from actors.runtime.actor import Actor, ActorSettings
from actors.runtime.addressing import LAUNCHER
from protocol.envelope import Envelope

RELAY_CLASS = "tests.shell_roles:RelayActor"


class RelayActor(Actor):
    """Config ``kinds``: the message kinds to relay to the launcher."""

    role = "relay"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        self.relayed = 0
        for kind in self.config.get("kinds", []):
            self.add_handler(kind, self._relay)

    def _relay(self, env: Envelope, now: int) -> None:
        self.relayed += 1
        self.send(LAUNCHER, env.kind, env.body)

    def counters(self) -> dict[str, Any]:
        return {"relayed": self.relayed}
