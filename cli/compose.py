"""``rxpath compose [CONFIG] -o FILE``: a docker-compose file for a scenario.

One service per actor instance, all on one user-defined network; each actor binds its
inbox on 0.0.0.0 inside its own container and is reached as ``tcp://<service>:PORT``,
so no host networking and no published ports. A ``coordinator`` service runs
``rxpath coordinate``: a launcher for which every actor is external; it waits for every
``ready``, starts the traffic, writes the verdict to the shared ``results`` volume and
exits 0 only if every flow arrived intact.

Next to FILE goes the topology the containers read (``<FILE stem>.topology.json``),
mounted read-only into each of them, and ``<FILE stem>.secrets/``: a CurveZMQ key pair
per actor and one for the coordinator (:mod:`actors.runtime.curve`). Every container
mounts, read-only, the public keys and its own secret key, nothing else; an inbox
accepts connections from those keys only. Pairs already there are kept, so writing the
file again does not lock out running containers; delete the directory for new keys.

``--swarm`` writes a Docker Swarm stack file for the same services instead
(:mod:`cli.swarm`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from actors.runtime.addressing import LAUNCHER
from actors.runtime.curve import PUBLIC_DIR, generate_keys, secret_key_path
from actors.scenario import Scenario
from cli.app import CONFIG_ERROR_EXIT, app
from cli.options import (
    DurationOption,
    ProfileOption,
    SeedOption,
    SetOption,
    SysctlOption,
    load_or_exit,
    make_overrides,
)
from cli.run import build_topology

IMAGE = "rxpath:local"
PORT = 5555                      # every container has its own address: one port for all
NETWORK = "rxpath"
RESULTS_VOLUME = "results"
RESULTS_DIR = "/results"
TOPOLOGY_IN_CONTAINER = "/etc/rxpath/topology.json"
STATE_DIR = "/var/lib/rxpath"    # in the container's own layer: survives its restarts
COORDINATOR = "coordinator"
KEYS_IN_CONTAINER = "/etc/rxpath/keys"

# What the engine does when an actor's process exits with an error (a crash or a
# SIGKILL). A restarted nic or cpu comes back with an empty ring and TCP retransmits
# what it lost; a reader reopens its side. The peer and the stack own the connections
# themselves: a new incarnation could not resume them, so they stay down and the
# coordinator reports the run as failed.
RESTART_POLICY: dict[str, str] = {
    "nic": "on-failure",
    "cpu": "on-failure",
    "reader": "on-failure",
    "peer": "no",
    "stack": "no",
}


def compose_topology(sc: Scenario) -> dict[str, Any]:
    """The scenario's topology with tcp endpoints by service name, every actor external
    (its container starts it) and logs to stdout."""
    topo = build_topology(sc)
    topo["transport"] = "tcp"
    topo["bind_host"] = "0.0.0.0"
    topo["launcher"] = {"host": COORDINATOR, "port": PORT}
    for name, entry in topo["actors"].items():
        entry.update(host=name, port=PORT, external=True)
    topo["log"] = {**topo.get("log", {}), "stdout": True}
    topo["curve"] = {"keys_dir": KEYS_IN_CONTAINER}
    return topo


def actor_command(name: str, entry: Mapping[str, Any]) -> list[str]:
    """What an actor's container runs after the image's entrypoint (compose and Swarm)."""
    return [str(entry["role"]), "--config", TOPOLOGY_IN_CONTAINER, "--name", name,
            "--instance", str(entry.get("instance", 0)),
            "--run-dir", RESULTS_DIR, "--state-dir", STATE_DIR]


def key_mounts(secrets_dir: str, name: str) -> list[str]:
    """What a container of actor ``name`` mounts from the secrets directory (read-only):
    every public key, and its own secret key."""
    secret = secret_key_path(Path(secrets_dir), name).relative_to(secrets_dir).as_posix()
    return [f"./{secrets_dir}/{PUBLIC_DIR}:{KEYS_IN_CONTAINER}/{PUBLIC_DIR}:ro",
            f"./{secrets_dir}/{secret}:{KEYS_IN_CONTAINER}/{secret}:ro"]


def compose_services(topology: dict[str, Any], topology_file: str,
                     image: str = IMAGE, secrets_dir: str | None = None) -> dict[str, Any]:
    """The compose document (as data) for a topology from :func:`compose_topology`;
    ``secrets_dir`` (beside the compose file) defaults to the topology file's stem
    with ``.secrets``."""
    image_ref = f"${{RXPATH_IMAGE:-{image}}}"   # the environment may name another build
    if secrets_dir is None:
        secrets_dir = secrets_dir_name(topology_file)
    mounts = [f"./{topology_file}:{TOPOLOGY_IN_CONTAINER}:ro",
              f"{RESULTS_VOLUME}:{RESULTS_DIR}"]
    services: dict[str, Any] = {
        COORDINATOR: {
            "image": image_ref,
            "entrypoint": ["rxpath", "coordinate"],
            "command": ["--config", TOPOLOGY_IN_CONTAINER, "--run-dir", RESULTS_DIR],
            "volumes": [*mounts, *key_mounts(secrets_dir, LAUNCHER)],
            "networks": [NETWORK],
            "restart": "no",
        },
    }
    for name, entry in topology["actors"].items():
        role = entry["role"]
        services[name] = {
            "image": image_ref,
            "command": actor_command(name, entry),
            "volumes": [*mounts, *key_mounts(secrets_dir, name)],
            "networks": [NETWORK],
            "restart": RESTART_POLICY.get(role, "no"),
            # The coordinator's inbox exists before any actor says ready.
            "depends_on": [COORDINATOR],
        }
    return {
        "version": "3.8",
        "services": services,
        "networks": {NETWORK: {"driver": "bridge"}},
        "volumes": {RESULTS_VOLUME: {}},
    }


def to_yaml(value: Any, indent: int = 0) -> str:
    """A small YAML emitter for the compose document: mappings, lists, scalars (strings
    are JSON-quoted, which YAML reads as double-quoted strings)."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict) and item:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(item, indent + 1))
            elif isinstance(item, list) and item and all(
                    isinstance(x, str | int) for x in item) and key in ("command", "entrypoint"):
                lines.append(f"{pad}{key}: {_flow(item)}")
            elif isinstance(item, list) and item:
                lines.append(f"{pad}{key}:")
                for x in item:
                    if isinstance(x, dict) and x:
                        # A mapping in a list (a stack file's secrets): block style,
                        # its first key on the dash's line.
                        first, *rest = to_yaml(x, indent + 2).split("\n")
                        lines.append(f"{pad}  - {first.lstrip()}")
                        lines.extend(rest)
                    else:
                        lines.append(f"{pad}  - {_scalar(x)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
        return "\n".join(lines)
    return f"{pad}{_scalar(value)}"


def _flow(items: list[Any]) -> str:
    return "[" + ", ".join(_scalar(x) for x in items) + "]"


def _scalar(value: Any) -> str:
    if value == {}:
        return "{}"
    if isinstance(value, list):
        return _flow(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def render_compose(sc: Scenario, topology_file: str, image: str = IMAGE) -> str:
    """The compose file's text."""
    doc = compose_services(compose_topology(sc), topology_file, image)
    head = (f"# docker-compose file for: {sc.description or sc.source}\n"
            "# Generated by `rxpath compose`; the containers read the topology mounted\n"
            f"# from ./{topology_file} and their CurveZMQ keys from "
            f"./{secrets_dir_name(topology_file)}/\n"
            "# (written beside this file, never to be shared or committed).\n"
            "# Run: docker-compose -f THIS up -d; the coordinator's\n"
            "# exit code is the verdict (0: every flow intact), results in volume "
            f"'{RESULTS_VOLUME}'.\n# Image: $RXPATH_IMAGE, default {image}.\n")
    return head + to_yaml(doc) + "\n"


def topology_file_for(out: Path) -> Path:
    """Where the topology goes beside the compose file ``out``."""
    return out.with_name(out.stem + ".topology.json")


def secrets_dir_name(topology_file: str) -> str:
    """``x.topology.json`` -> ``x.secrets``: the key directory beside the compose file."""
    return topology_file.removesuffix(".topology.json") + ".secrets"


def secrets_dir_for(out: Path) -> Path:
    """Where the keys go beside the compose file ``out``."""
    return out.with_name(secrets_dir_name(topology_file_for(out).name))


def write_compose(sc: Scenario, out: Path, image: str = IMAGE) -> tuple[Path, Path]:
    """Write the compose file, its topology and the keys (missing pairs only); returns
    the compose file's and the topology's paths."""
    topo_path = topology_file_for(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    topology = compose_topology(sc)
    generate_keys(secrets_dir_for(out), [LAUNCHER, *topology["actors"]])
    topo_path.write_text(json.dumps(topology, indent=2, sort_keys=True) + "\n")
    out.write_text(render_compose(sc, topo_path.name, image))
    return out, topo_path


@app.command("compose")
def compose(
    config: Annotated[Path | None, typer.Argument(
        help="Scenario TOML file (default: the embedded default topology).")] = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Compose file to write (its topology goes beside it); "
        "default docker-compose.yml, with --swarm docker-stack.yml.")] = None,
    image: Annotated[str, typer.Option("--image", help="Image every service runs.")]
        = IMAGE,
    swarm: Annotated[bool, typer.Option(
        "--swarm", help="Write a stack file for `docker stack deploy` on Docker Swarm: "
        "an overlay network, placement per role (node labels rxpath.ROLE=true), "
        "the keys as swarm secrets, the topology as a swarm config.")] = False,
    place: Annotated[list[str] | None, typer.Option(
        "--place", metavar="KEY=CONSTRAINT",
        help="With --swarm: where a role, an actor or all of them run, as a swarm "
        "constraint instead of the role's label, e.g. cpu1='node.hostname == h2'; "
        "'any' for no constraint (all=any: anywhere). Repeatable.")] = None,
    profile: ProfileOption = None,
    seed: SeedOption = None,
    duration: DurationOption = None,
    sysctl: SysctlOption = None,
    sets: SetOption = None,
) -> None:
    """Write a docker-compose file (or with --swarm a Docker Swarm stack file): one
    container per actor plus a coordinator."""
    if place and not swarm:
        typer.echo("rxpath compose: --place needs --swarm", err=True)
        raise typer.Exit(CONFIG_ERROR_EXIT)
    sc = load_or_exit(config, make_overrides(profile, seed, duration, sysctl, sets))
    if swarm:
        from cli import swarm as swarm_stack  # it builds on this module

        try:
            out, topo = swarm_stack.write_stack(
                sc, output or Path("docker-stack.yml"), image,
                swarm_stack.parse_place(place or []))
        except ValueError as exc:
            typer.echo(f"rxpath compose: {exc}", err=True)
            raise typer.Exit(CONFIG_ERROR_EXIT) from None
    else:
        out, topo = write_compose(sc, output or Path("docker-compose.yml"), image)
    typer.echo(f"wrote {out}, {topo} and the keys in {secrets_dir_for(out)}/", err=True)
