"""Supervision of a running topology: restart policies, back-off, intensity, hangs.

The :class:`Supervisor` sits beside a :class:`~actors.runtime.launcher.Launcher`. The
run loop hands it every message it polled (:meth:`Supervisor.observe`) and calls
:meth:`Supervisor.tick` often; the supervisor then

* notices an actor that exited and, by its role's :class:`RestartPolicy`, restarts it
  after an exponential back-off (``always``: whatever the exit code; ``on-failure``:
  unless it exited 0; ``never``);
* gives up (:class:`SupervisorGaveUp`) when more than ``max_restarts`` restarts happen
  within ``window_s``: a crash loop is a failed run, not a slow one;
* watches heartbeats: an actor silent for ``hang_after_s`` is reported hung (a
  SIGSTOPped process, or one blocked on a stopped neighbour), and resumed when it
  beats again; with ``restart_hung_after_s`` set (a watchdog, like systemd's
  ``WatchdogSec``), one still silent that long is SIGKILLed and its death handled as
  a failure, so ``on-failure`` and ``always`` restart it;
* tells the actors concerned what happened, with a ``peer_event`` message, so each
  follows what Linux does: the stack runs ``task_exit`` for a dead reader, the nic
  gives a restarted cpu's queues their credits back, a cpu abandons a batch a dead
  stack will never answer, readers of a dead stack see ECONNRESET.

Default policies: ``peer`` never (the remote host's connections die with it; the
receiver keeps its sockets until they time out), every other role ``on-failure``.
"""

from __future__ import annotations

import signal
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from actors.runtime import procutil
from protocol import messages as msg
from protocol.envelope import Envelope, register_kind

if TYPE_CHECKING:
    from actors.runtime.launcher import Launcher

PEER_EVENT = register_kind(
    "peer_event", {"actor": str, "role": str, "event": str, "incarnation": int},
    doc="launcher -> actor: a neighbour exited (event 'exited') or was restarted "
        "('restarted'); the receiver drops what it kept for the old process")

POLICIES = ("always", "on-failure", "never")
DEFAULT_POLICIES: Mapping[str, str] = {
    "peer": "never", "nic": "on-failure", "cpu": "on-failure", "stack": "on-failure",
    "reader": "on-failure",
}


class SupervisorGaveUp(RuntimeError):
    """Too many restarts in the window: the run fails, naming the actors."""


@dataclass(frozen=True)
class RestartPolicy:
    """How the supervisor treats exits (see the module docstring)."""

    policies: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_POLICIES))
    backoff_s: float = 0.05          # first restart delay; doubles per consecutive restart
    backoff_max_s: float = 2.0
    stable_s: float = 10.0           # up this long: the back-off starts over
    max_restarts: int = 10           # restart intensity: at most this many ...
    window_s: float = 10.0           # ... within this many seconds
    hang_after_s: float = 1.5        # no heartbeat for this long: hung
    # No heartbeat for this long: killed as a failure (None: hangs are only reported).
    restart_hung_after_s: float | None = None

    def __post_init__(self) -> None:
        for role, policy in self.policies.items():
            if policy not in POLICIES:
                raise ValueError(f"restart policy for {role!r}: {policy!r} is not one of "
                                 f"{', '.join(POLICIES)}")
        watchdog = self.restart_hung_after_s
        if watchdog is not None and watchdog < self.hang_after_s:
            raise ValueError(f"restart_hung_after_s ({watchdog:g} s) is shorter than "
                             f"hang_after_s ({self.hang_after_s:g} s)")

    def policy(self, role: str) -> str:
        return self.policies.get(role, "on-failure")

    def wants_restart(self, role: str, code: int) -> bool:
        policy = self.policy(role)
        return policy == "always" or (policy == "on-failure" and code != 0)


# Who must hear of an actor's death or rebirth, by its role.
_TELL: Mapping[str, tuple[str, ...]] = {
    "reader": ("stack",),
    "cpu": ("nic", "stack"),
    "nic": ("cpu", "stack", "peer"),
    "stack": ("reader", "cpu", "nic"),
    "peer": ("nic",),
}


@dataclass
class _Watch:
    consecutive: int = 0            # restarts without a stable period in between
    restart_at: float | None = None  # when a pending restart is due
    up_since: float = 0.0
    last_beat: float = 0.0
    hung: bool = False
    stopped_by_us: bool = False
    watchdog_killed: bool = False    # we SIGKILLed it as hung: its exit is a failure


class Supervisor:
    """Restart and hang watch for one launcher; see the module docstring."""

    def __init__(self, launcher: Launcher, policy: RestartPolicy | None = None, *,
                 clock: Any = time.monotonic) -> None:
        self.launcher = launcher
        self.policy = policy or RestartPolicy()
        self.clock = clock
        now = clock()
        self.watch = {n: _Watch(up_since=now, last_beat=now) for n in launcher.names}
        self.restart_times: deque[float] = deque()
        self.events: list[dict[str, Any]] = []     # what happened, for the summary
        self.deaths: list[dict[str, Any]] = []     # (actor, role, incarnation, code)
        self.restarts = 0
        self.hangs = 0
        self.watchdog_kills = 0

    # --- what the run loop calls -----------------------------------------------------

    def observe(self, env: Envelope) -> None:
        """A message the run loop polled: heartbeats feed the hang watch."""
        w = self.watch.get(env.sender)
        if w is None or env.kind not in (msg.HEARTBEAT, msg.STATS):
            return
        w.last_beat = self.clock()
        if w.hung:
            w.hung = False
            self._record("actor_resumed", env.sender)

    def tick(self) -> None:
        """Handle exits, due restarts and hangs; raises :class:`SupervisorGaveUp`."""
        now = self.clock()
        exited = self.launcher.exited()
        for name, code in exited.items():
            w = self.watch[name]
            if w.restart_at is not None or self._known_dead(name):
                continue
            proc = self.launcher.process(name)
            hung = w.watchdog_killed
            w.watchdog_killed = False
            self.deaths.append({"actor": name, "role": proc.role,
                                "incarnation": proc.incarnation, "code": code,
                                **({"hung": True} if hung else {})})
            self._record("actor_died", name, code=code, exit=procutil.describe_exit(code),
                         incarnation=proc.incarnation)
            self._tell(name, proc.role, "exited", proc.incarnation)
            if not self.policy.wants_restart(proc.role, code):
                self._record("not_restarted", name, policy=self.policy.policy(proc.role))
                continue
            if now - w.up_since >= self.policy.stable_s:
                w.consecutive = 0
            delay = min(self.policy.backoff_max_s,
                        self.policy.backoff_s * (2 ** w.consecutive))
            w.consecutive += 1
            w.restart_at = now + delay
        for name, w in self.watch.items():
            if w.restart_at is not None and self.clock() >= w.restart_at:
                self._restart(name)
        self._check_hangs()

    def stop_actor(self, name: str) -> None:
        """SIGSTOP an actor (chaos): the hang watch is expected to notice it."""
        self.launcher.kill(name, signal.SIGSTOP, timeout_s=None)
        self.watch[name].stopped_by_us = True

    def cont_actor(self, name: str) -> None:
        self.launcher.kill(name, signal.SIGCONT, timeout_s=None)
        self.watch[name].stopped_by_us = False

    def resume_all(self) -> None:
        """SIGCONT every actor we stopped (before the launcher stops the run)."""
        for name, w in self.watch.items():
            if w.stopped_by_us:
                self.cont_actor(name)

    def summary(self) -> dict[str, Any]:
        return {"restarts": self.restarts, "hangs": self.hangs,
                "hung_killed": self.watchdog_kills, "deaths": self.deaths,
                "events": self.events}

    # --- internals ---------------------------------------------------------------------

    def _known_dead(self, name: str) -> bool:
        proc = self.launcher.process(name)
        return any(d["actor"] == name and d["incarnation"] == proc.incarnation
                   for d in self.deaths)

    def _restart(self, name: str) -> None:
        w = self.watch[name]
        now = self.clock()
        window = self.policy.window_s
        while self.restart_times and now - self.restart_times[0] > window:
            self.restart_times.popleft()
        if len(self.restart_times) >= self.policy.max_restarts:
            self._record("restart_intensity_exceeded", name,
                         restarts=len(self.restart_times), window_s=window)
            raise SupervisorGaveUp(
                f"{len(self.restart_times)} restarts within {window:g} s "
                f"(limit {self.policy.max_restarts}); last to die: {name}")
        self.restart_times.append(now)
        w.restart_at = None
        proc = self.launcher.process(name)
        pid = self.launcher.restart(name)
        self.restarts += 1
        now = self.clock()
        w.up_since = now
        w.last_beat = now
        w.hung = False
        w.stopped_by_us = False
        self._record("actor_restarted", name, pid=pid, incarnation=proc.incarnation,
                     attempt=w.consecutive)
        self._tell(name, proc.role, "restarted", proc.incarnation)

    def _tell(self, name: str, role: str, event: str, incarnation: int) -> None:
        tell_neighbours(self.launcher, name, role, event, incarnation)

    def _check_hangs(self) -> None:
        now = self.clock()
        for name, w in self.watch.items():
            proc = self.launcher.process(name)
            if not proc.running or not proc.ready:
                continue
            silent = now - w.last_beat
            if not w.hung and silent > self.policy.hang_after_s:
                w.hung = True
                self.hangs += 1
                self._record("actor_hung", name, silent_s=round(silent, 3),
                             stopped=w.stopped_by_us)
            watchdog = self.policy.restart_hung_after_s
            if (w.hung and watchdog is not None and silent > watchdog
                    and not w.watchdog_killed
                    and self.policy.policy(proc.role) != "never"):
                # SIGKILL reaches a stopped process too; the exit path restarts it.
                w.watchdog_killed = True
                w.stopped_by_us = False
                self.watchdog_kills += 1
                self._record("actor_hung_killed", name, silent_s=round(silent, 3),
                             pid=proc.pid, incarnation=proc.incarnation)
                self.launcher.kill(name, signal.SIGKILL, timeout_s=None)

    def _record(self, event: str, actor: str, **fields: Any) -> None:
        entry = {"t": round(self.clock(), 3), "event": event, "actor": actor, **fields}
        self.events.append(entry)
        log = self.launcher.log
        if log is not None:
            level = "info" if event in ("actor_restarted", "actor_resumed") else "warning"
            getattr(log, level)(event, actor=actor, **fields)


def tell_neighbours(launcher: Launcher, name: str, role: str, event: str,
                    incarnation: int) -> None:
    """Send ``peer_event`` to the actors that keep state about ``name`` (see ``_TELL``)."""
    roles = _TELL.get(role, ())
    for other in launcher.names:
        p = launcher.process(other)
        alive = p.running or (p.external and p.ready)
        if other == name or p.role not in roles or not alive:
            continue
        launcher.send(other, PEER_EVENT, {"actor": name, "role": role, "event": event,
                                          "incarnation": incarnation})
