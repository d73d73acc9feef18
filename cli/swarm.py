"""``rxpath compose --swarm``: a stack file that ``docker stack deploy`` runs on Docker Swarm.

The same services as the docker-compose file (:mod:`cli.compose`): one per actor plus
the ``coordinator``, the same image, commands and topology. What Swarm does differently:

- The services share an attachable **overlay network**, which spans every node of the
  swarm; each service's name (the stack adds it as an alias) is its ``tcp://`` address,
  so the topology is the compose one, unchanged.
- Services are reached by DNS round robin (``endpoint_mode: dnsrr``): the name is the
  task's own address, no virtual IP, so no IPVS is needed on the hosts.
- Each service carries **placement constraints**, by default
  ``node.labels.rxpath.ROLE == true``: a node runs the roles whose labels it has, so
  spreading the actors over hosts is ``docker node update --label-add rxpath.cpu=true
  HOST``. ``--place KEY=CONSTRAINT`` replaces the default for a role, one actor (``cpu1``)
  or ``all``; ``any`` means no constraint. The coordinator goes where the readers go,
  unless placed itself: it judges the run from the delivery records the readers write
  to the ``results`` volume, and a ``local`` volume exists on one node only.
- Swarm ignores ``restart``, ``depends_on`` and ``container_name``: the compose file's
  per-role restart policy becomes ``deploy.restart_policy`` (``on-failure`` for nic, cpu
  and readers, ``none`` for peer, stack and the coordinator, so the coordinator's one
  task keeps the verdict as its exit code).
- A restarted task is a new container, so the directory that counts an actor's
  incarnations across restarts is a volume (``state``), not the container's own layer.
- The CurveZMQ keys are **swarm secrets**, mounted where the actors look for them
  (``/etc/rxpath/keys``): every service gets every public key and its own secret key
  only (mode 0400); the topology is a **swarm config**.

Secrets and configs cannot change once created: ``docker stack rm`` the stack before
deploying a scenario whose topology or keys changed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from actors.runtime.addressing import LAUNCHER
from actors.runtime.curve import (
    PRIVATE_DIR,
    PUBLIC_DIR,
    PUBLIC_SUFFIX,
    SECRET_SUFFIX,
    generate_keys,
)
from actors.scenario import Scenario
from cli.compose import (
    COORDINATOR,
    IMAGE,
    KEYS_IN_CONTAINER,
    RESTART_POLICY,
    RESULTS_DIR,
    RESULTS_VOLUME,
    STATE_DIR,
    TOPOLOGY_IN_CONTAINER,
    actor_command,
    compose_topology,
    secrets_dir_for,
    secrets_dir_name,
    to_yaml,
    topology_file_for,
)

NETWORK = "rxpath"
STATE_VOLUME = "state"
TOPOLOGY_CONFIG = "topology"
LABEL_PREFIX = "rxpath."
ANY = "any"
ALL = "all"
# Swarm's own default is 5 s; a cpu down that long stalls the transfer for nothing.
RESTART_DELAY = "1s"
# compose `restart:` -> swarm `deploy.restart_policy.condition`
_CONDITION = {"no": "none", "on-failure": "on-failure", "always": "any"}
# Modes of the mounted files, as the integers the stack file wants (0444, 0400): a
# secret key readable by others is refused (actors.runtime.curve).
PUBLIC_MODE = 0o444
SECRET_MODE = 0o400
_CONSTRAINT = re.compile(r"^\s*[A-Za-z][\w.\-]*\s*(==|!=)\s*\S.*$")
_LABEL_TRUE = re.compile(r"^node\.labels\.(\S+) == true$")


def role_label(role: str) -> str:
    """The node label that admits ``role`` (``rxpath.cpu``)."""
    return LABEL_PREFIX + role


def default_constraint(role: str) -> str:
    return f"node.labels.{role_label(role)} == true"


def parse_place(items: Iterable[str]) -> dict[str, list[str]]:
    """``--place KEY=CONSTRAINT`` options -> {KEY: [constraints]}; ``any`` gives [].
    A KEY given twice gets both constraints (Swarm ANDs them)."""
    place: dict[str, list[str]] = {}
    for item in items:
        key, sep, expr = item.partition("=")
        key, expr = key.strip(), expr.strip()
        if not sep or not key or not expr:
            raise ValueError(f"--place {item!r}: expected KEY=CONSTRAINT, e.g. "
                             "cpu='node.hostname == host2' or all=any")
        if expr == ANY:
            place[key] = []
            continue
        if not _CONSTRAINT.match(expr):
            raise ValueError(f"--place {item!r}: {expr!r} is not a swarm constraint "
                             "(NAME == VALUE or NAME != VALUE, e.g. node.labels.zone == a)")
        place.setdefault(key, []).append(expr)
    return place


def placements(topology: Mapping[str, Any],
               place: Mapping[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Each service's placement constraints: its actor's ``--place``, else its role's,
    else ``all``'s, else the role's label. The coordinator follows the readers' role
    unless placed itself."""
    place = dict(place or {})
    actors: Mapping[str, Any] = topology["actors"]
    known = {COORDINATOR, ALL, *actors, *(e["role"] for e in actors.values())}
    unknown = sorted(set(place) - known)
    if unknown:
        raise ValueError(f"--place {unknown[0]}: not a role, an actor or 'all' (known: "
                         f"{', '.join(sorted(known))})")

    def for_role(role: str) -> list[str]:
        if role in place:
            return list(place[role])
        if ALL in place:
            return list(place[ALL])
        return [default_constraint(role)]

    out = {COORDINATOR: list(place[COORDINATOR]) if COORDINATOR in place
           else for_role("reader")}
    for name, entry in actors.items():
        out[name] = list(place[name]) if name in place else for_role(entry["role"])
    return out


def labels_needed(constraints: Mapping[str, list[str]]) -> list[str]:
    """The ``rxpath.*`` node labels the constraints ask for (what one node running the
    whole stack needs: ``docker node update --label-add L=true ...``)."""
    labels = {m.group(1) for cs in constraints.values() for c in cs
              if (m := _LABEL_TRUE.match(c)) and m.group(1).startswith(LABEL_PREFIX)}
    return sorted(labels)


THIS_NODE = "\"$(docker info -f '{{.Swarm.NodeID}}')\""


def label_command(labels: Iterable[str], node: str = THIS_NODE) -> list[str]:
    """``docker node update`` giving ``node`` the labels, as shell lines of a few labels
    each (continued with a backslash)."""
    lines = ["docker node update"]
    for word in [*(f"--label-add {label}=true" for label in labels), node]:
        if len(lines[-1]) + len(word) + 1 > 72:
            lines[-1] += " \\"
            lines.append("  " + word)
        else:
            lines[-1] += " " + word
    return lines


def _secret_names(name: str) -> tuple[str, str]:
    """The stack's secret names for actor ``name``: its public and its secret key."""
    return f"pub-{name}", f"sec-{name}"


def key_secrets(names: Iterable[str], name: str) -> list[dict[str, Any]]:
    """What service ``name`` mounts: every public key, and its own secret key only."""
    mounts = [{"source": _secret_names(n)[0],
               "target": f"{KEYS_IN_CONTAINER}/{PUBLIC_DIR}/{n}{PUBLIC_SUFFIX}",
               "mode": PUBLIC_MODE} for n in names]
    mounts.append({"source": _secret_names(name)[1],
                   "target": f"{KEYS_IN_CONTAINER}/{PRIVATE_DIR}/{name}{SECRET_SUFFIX}",
                   "mode": SECRET_MODE})
    return mounts


def stack_services(topology: dict[str, Any], topology_file: str, image: str = IMAGE,
                   place: Mapping[str, list[str]] | None = None,
                   secrets_dir: str | None = None) -> dict[str, Any]:
    """The stack document (as data) for a topology from
    :func:`cli.compose.compose_topology`; files are named relative to the stack file."""
    image_ref = f"${{RXPATH_IMAGE:-{image}}}"
    if secrets_dir is None:
        secrets_dir = secrets_dir_name(topology_file)
    names = [LAUNCHER, *topology["actors"]]
    constraints = placements(topology, place)
    config = [{"source": TOPOLOGY_CONFIG, "target": TOPOLOGY_IN_CONTAINER,
               "mode": PUBLIC_MODE}]

    def deploy(service: str, restart: str) -> dict[str, Any]:
        policy: dict[str, Any] = {"condition": _CONDITION[restart]}
        if policy["condition"] != "none":
            policy["delay"] = RESTART_DELAY
        # dnsrr: a service's name resolves to its task's own address, not to a virtual
        # IP that IPVS balances (one task per service: nothing to balance; a host without
        # IPVS, as many minimal kernels are, cannot route a VIP at all). A restarted
        # task's new address is what the others reconnect to.
        out: dict[str, Any] = {"endpoint_mode": "dnsrr", "replicas": 1,
                               "restart_policy": policy}
        if constraints[service]:
            out["placement"] = {"constraints": constraints[service]}
        return out

    services: dict[str, Any] = {
        COORDINATOR: {
            "image": image_ref,
            "entrypoint": ["rxpath", "coordinate"],
            "command": ["--config", TOPOLOGY_IN_CONTAINER, "--run-dir", RESULTS_DIR],
            "volumes": [f"{RESULTS_VOLUME}:{RESULTS_DIR}"],
            "configs": config,
            "secrets": key_secrets(names, LAUNCHER),
            "networks": [NETWORK],
            "deploy": deploy(COORDINATOR, "no"),
        },
    }
    for name, entry in topology["actors"].items():
        role = entry["role"]
        services[name] = {
            "image": image_ref,
            "command": actor_command(name, entry),
            "volumes": [f"{RESULTS_VOLUME}:{RESULTS_DIR}", f"{STATE_VOLUME}:{STATE_DIR}"],
            "configs": config,
            "secrets": key_secrets(names, name),
            "networks": [NETWORK],
            "deploy": deploy(name, RESTART_POLICY.get(role, "no")),
        }
    secrets: dict[str, Any] = {}
    for n in names:
        pub, sec = _secret_names(n)
        secrets[pub] = {"file": f"./{secrets_dir}/{PUBLIC_DIR}/{n}{PUBLIC_SUFFIX}"}
        secrets[sec] = {"file": f"./{secrets_dir}/{PRIVATE_DIR}/{n}{SECRET_SUFFIX}"}
    return {
        "version": "3.8",
        "services": services,
        # attachable: `docker run --network STACK_rxpath` can join it (a debugging shell).
        "networks": {NETWORK: {"driver": "overlay", "attachable": True}},
        "volumes": {RESULTS_VOLUME: {}, STATE_VOLUME: {}},
        "configs": {TOPOLOGY_CONFIG: {"file": f"./{topology_file}"}},
        "secrets": secrets,
    }


def render_stack(sc: Scenario, topology_file: str, image: str = IMAGE,
                 place: Mapping[str, list[str]] | None = None,
                 topology: dict[str, Any] | None = None) -> str:
    """The stack file's text (``topology``: the scenario's, when already built)."""
    if topology is None:
        topology = compose_topology(sc)
    doc = stack_services(topology, topology_file, image, place)
    labels = labels_needed({s: v["deploy"].get("placement", {}).get("constraints", [])
                            for s, v in doc["services"].items()})
    one_node = ("".join(f"#   {line}\n" for line in label_command(labels)) if labels
                else "#   (no node labels needed: nothing is constrained by label)\n")
    head = (f"# Docker Swarm stack file for: {sc.description or sc.source}\n"
            "# Generated by `rxpath compose --swarm`; the services read the topology\n"
            f"# ./{topology_file} as a swarm config and their CurveZMQ keys from\n"
            f"# ./{secrets_dir_name(topology_file)}/ as swarm secrets (never to be shared "
            "or committed).\n"
            "# A node runs the roles whose labels it carries; one node running them all:\n"
            f"{one_node}"
            "# Run: docker stack deploy --resolve-image never -c THIS rx; the verdict is the\n"
            "# exit code of the coordinator's one task (0: every flow intact):\n"
            "#   docker inspect -f '{{.Status.ContainerStatus.ExitCode}}' "
            "$(docker service ps -q rx_coordinator)\n"
            "#   docker service logs --raw rx_coordinator 2>/dev/null | tail -1  # as JSON\n"
            f"# Image: $RXPATH_IMAGE, default {image}; an image ID (sha256:...) is used\n"
            "# as it is, a tag is looked up in a registry first. Between two runs:\n"
            f"#   docker stack rm rx; then on each node: docker volume rm rx_{RESULTS_VOLUME} "
            f"rx_{STATE_VOLUME}\n"
            "# File modes below are decimal: 292 = 0444, 256 = 0400.\n")
    return head + to_yaml(doc) + "\n"


def write_stack(sc: Scenario, out: Path, image: str = IMAGE,
                place: Mapping[str, list[str]] | None = None) -> tuple[Path, Path]:
    """Write the stack file, its topology and the keys (missing pairs only); returns the
    stack file's and the topology's paths."""
    topology = compose_topology(sc)
    topo_path = topology_file_for(out)
    # Rendered first: a bad --place writes nothing.
    text = render_stack(sc, topo_path.name, image, place, topology)
    out.parent.mkdir(parents=True, exist_ok=True)
    generate_keys(secrets_dir_for(out), [LAUNCHER, *topology["actors"]])
    topo_path.write_text(json.dumps(topology, indent=2, sort_keys=True) + "\n")
    out.write_text(text)
    return out, topo_path
