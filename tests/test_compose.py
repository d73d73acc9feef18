"""rxpath compose / actor / coordinate: the generated files, and a real run of external
actors over tcp on loopback (the same path a docker-compose run takes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from actors.runtime.actor import ActorSettings
from actors.runtime.addressing import endpoints_from_topology, free_tcp_ports
from actors.runtime.curve import generate_keys
from cli.actor_cmd import next_incarnation, resolve_actor
from cli.compose import (
    COORDINATOR,
    PORT,
    RESTART_POLICY,
    compose_services,
    compose_topology,
    render_compose,
    topology_file_for,
)
from cli.config import load_scenario
from cli.coordinate import scenario_of
from cli.main import app
from cli.run import build_topology
from cli.swarm import (
    labels_needed,
    parse_place,
    placements,
    render_stack,
    stack_services,
)

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def test_checked_in_default_compose_is_what_rxpath_compose_writes(tmp_path: Path) -> None:
    out = tmp_path / "compose.default.yml"
    result = CliRunner().invoke(app, ["compose", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == (DOCKER / "compose.default.yml").read_text(), \
        "docker/compose.default.yml is stale: run `rxpath compose -o docker/compose.default.yml`"
    topo = topology_file_for(out)
    assert topo.read_text() == (DOCKER / "compose.default.topology.json").read_text()


def test_one_service_per_actor_plus_coordinator_on_one_network() -> None:
    sc = load_scenario(None)
    topo = compose_topology(sc)
    doc = compose_services(topo, "t.json")
    services = doc["services"]
    assert set(services) == {*topo["actors"], COORDINATOR}
    assert set(topo["actors"]) == {"peer", "nic", "stack", "cpu0", "cpu1", "r1", "r2"}
    for name, svc in services.items():
        assert svc["networks"] == ["rxpath"]
        assert "network_mode" not in svc and "ports" not in svc
        assert "results:/results" in svc["volumes"]
        assert "./t.json:/etc/rxpath/topology.json:ro" in svc["volumes"]
        if name != COORDINATOR:
            role = topo["actors"][name]["role"]
            assert svc["command"][0] == role
            assert svc["command"][svc["command"].index("--name") + 1] == name
            assert svc["restart"] == RESTART_POLICY[role]
            assert svc["depends_on"] == [COORDINATOR]
    assert services["cpu0"]["restart"] == "on-failure"
    assert services["nic"]["restart"] == "on-failure"
    assert services[COORDINATOR]["restart"] == "no"
    assert doc["networks"] == {"rxpath": {"driver": "bridge"}}


def test_endpoints_bind_all_interfaces_and_connect_by_service_name() -> None:
    topo = compose_topology(load_scenario(None))
    eps = endpoints_from_topology(topo, "/nonexistent")
    for name, ep in eps.items():
        host = COORDINATOR if name == "launcher" else name
        assert ep.bind == f"tcp://0.0.0.0:{PORT}"
        assert ep.connect == f"tcp://{host}:{PORT}"
    assert all(e["external"] for e in topo["actors"].values())
    assert topo["log"]["stdout"] is True


def test_render_is_yaml_with_image_override_and_scenario_roundtrips() -> None:
    sc = load_scenario(DOCKER / "chaos.toml")
    text = render_compose(sc, "x.topology.json", image="img:1")
    assert '    image: "${RXPATH_IMAGE:-img:1}"' in text
    assert 'entrypoint: ["rxpath", "coordinate"]' in text
    assert scenario_of(compose_topology(sc)).to_dict() == sc.to_dict()


def test_a_topology_with_the_scenario_in_every_actor_config_still_reads(
        tmp_path: Path) -> None:
    """The form written before the shared top-level config: each actor carries the whole
    scenario beside its own keys. Both the coordinator and every actor still find it, and
    an actor's own keys win over the shared ones."""
    sc = load_scenario(None)
    topo = build_topology(sc)
    shared = topo.pop("config")
    topo["actors"]["nic"]["config"] = {"wire_peer": "launcher"}
    for entry in topo["actors"].values():
        entry["config"] = {**shared, **(entry.get("config") or {})}
    assert scenario_of(topo).to_dict() == sc.to_dict()
    for name, entry in topo["actors"].items():
        config = ActorSettings.from_topology(topo, name, tmp_path).config
        assert config == entry["config"]
        assert config["scenario"] == shared["scenario"]

    topo["config"] = {"scenario": {"not": "this one"}, "wire_peer": "shared"}
    nic = ActorSettings.from_topology(topo, "nic", tmp_path).config
    assert nic["scenario"] == shared["scenario"]
    assert nic["wire_peer"] == "launcher"
    cpu = ActorSettings.from_topology(topo, "cpu0", tmp_path).config
    assert cpu["wire_peer"] == "shared"  # a key the actor does not set comes from the top


def test_resolve_actor_by_role_name_and_instance() -> None:
    topo = compose_topology(load_scenario(None))
    assert resolve_actor(topo, "nic", None, None) == ("nic", 0)
    assert resolve_actor(topo, "cpu", None, 1) == ("cpu1", 1)
    assert resolve_actor(topo, "cpu", "cpu0", None) == ("cpu0", 0)
    with pytest.raises(ValueError, match="give --name"):
        resolve_actor(topo, "cpu", None, None)
    with pytest.raises(ValueError, match="has role"):
        resolve_actor(topo, "nic", "cpu0", None)
    with pytest.raises(ValueError, match="no actor named"):
        resolve_actor(topo, "nic", "nope", None)


def test_incarnation_counts_restarts_in_the_state_dir(tmp_path: Path) -> None:
    assert [next_incarnation(tmp_path / "s", "cpu0") for _ in range(3)] == [0, 1, 2]
    assert next_incarnation(tmp_path / "s", "cpu1") == 0


def test_actor_command_rejects_bad_topology(tmp_path: Path) -> None:
    bad = tmp_path / "t.json"
    bad.write_text("{not json")
    result = CliRunner().invoke(app, ["actor", "nic", "--config", str(bad)])
    assert result.exit_code == 2


# --- rxpath compose --swarm: the stack file -------------------------------------------------

def _stack(place: dict[str, list[str]] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    topo = compose_topology(load_scenario(None))
    return topo, stack_services(topo, "s.topology.json", place=place)


def test_stack_has_the_compose_services_on_an_overlay_network_and_no_compose_only_keys() -> None:
    topo, doc = _stack()
    assert doc["version"] == "3.8"
    assert set(doc["services"]) == {*topo["actors"], COORDINATOR}
    assert doc["networks"] == {"rxpath": {"driver": "overlay", "attachable": True}}
    assert doc["volumes"] == {"results": {}, "state": {}}
    assert doc["configs"] == {"topology": {"file": "./s.topology.json"}}
    for name, svc in doc["services"].items():
        # Swarm ignores these; a stack file that has them promises what it cannot keep.
        assert not {"restart", "depends_on", "container_name", "ports"} & set(svc)
        assert svc["networks"] == ["rxpath"]
        assert svc["configs"] == [{"source": "topology",
                                   "target": "/etc/rxpath/topology.json", "mode": 0o444}]
        assert svc["deploy"]["endpoint_mode"] == "dnsrr"
        assert svc["deploy"]["replicas"] == 1
        assert "results:/results" in svc["volumes"]
        if name != COORDINATOR:
            # A restarted task is a new container: incarnations are counted on a volume.
            assert "state:/var/lib/rxpath" in svc["volumes"]
            assert svc["command"][svc["command"].index("--state-dir") + 1] == "/var/lib/rxpath"
    compose = compose_services(topo, "s.topology.json")["services"]
    for name in topo["actors"]:
        assert doc["services"][name]["command"] == compose[name]["command"]
    assert doc["services"][COORDINATOR]["entrypoint"] == ["rxpath", "coordinate"]


def test_each_service_gets_every_public_key_and_only_its_own_secret_key() -> None:
    topo, doc = _stack()
    names = {"launcher", *topo["actors"]}
    assert set(doc["secrets"]) == {f"pub-{n}" for n in names} | {f"sec-{n}" for n in names}
    for n in names:
        assert doc["secrets"][f"pub-{n}"] == {"file": f"./s.secrets/public/{n}.key"}
        assert doc["secrets"][f"sec-{n}"] == {"file": f"./s.secrets/private/{n}.key_secret"}
    for service, svc in doc["services"].items():
        own = "launcher" if service == COORDINATOR else service
        mounts = {m["source"]: m for m in svc["secrets"]}
        assert {s for s in mounts if s.startswith("sec-")} == {f"sec-{own}"}
        assert {s for s in mounts if s.startswith("pub-")} == {f"pub-{n}" for n in names}
        # Where the actors look (curve.secret_key_path under the topology's keys_dir),
        # and 0400: a secret key others can read is refused.
        assert mounts[f"sec-{own}"]["target"] == \
            f"{topo['curve']['keys_dir']}/private/{own}.key_secret"
        assert mounts[f"sec-{own}"]["mode"] == 0o400
        for n in names:
            assert mounts[f"pub-{n}"]["target"] == f"/etc/rxpath/keys/public/{n}.key"
            assert mounts[f"pub-{n}"]["mode"] == 0o444


def test_restart_policies_mirror_the_compose_file() -> None:
    topo, doc = _stack()
    for name, svc in doc["services"].items():
        policy = svc["deploy"]["restart_policy"]
        if name == COORDINATOR:
            # Its one task keeps the verdict as its exit code.
            assert policy == {"condition": "none"}
            continue
        compose_policy = RESTART_POLICY[topo["actors"][name]["role"]]
        if compose_policy == "on-failure":
            assert policy == {"condition": "on-failure", "delay": "1s"}
        else:
            assert compose_policy == "no" and policy == {"condition": "none"}
    assert doc["services"]["cpu0"]["deploy"]["restart_policy"]["condition"] == "on-failure"
    assert doc["services"]["stack"]["deploy"]["restart_policy"]["condition"] == "none"


def test_placement_by_role_label_and_the_coordinator_follows_the_readers() -> None:
    topo, doc = _stack()
    cons = {n: s["deploy"]["placement"]["constraints"] for n, s in doc["services"].items()}
    for name, entry in topo["actors"].items():
        assert cons[name] == [f"node.labels.rxpath.{entry['role']} == true"]
    assert cons[COORDINATOR] == ["node.labels.rxpath.reader == true"]
    assert labels_needed(cons) == ["rxpath.cpu", "rxpath.nic", "rxpath.peer",
                                   "rxpath.reader", "rxpath.stack"]


def test_place_overrides_actor_before_role_before_all() -> None:
    topo = compose_topology(load_scenario(None))
    place = parse_place(["all=node.labels.zone == a", "cpu=node.hostname == h2",
                         "cpu1=node.hostname == h3", "cpu1=node.role != manager",
                         "peer=any"])
    got = placements(topo, place)
    assert got["cpu0"] == ["node.hostname == h2"]
    assert got["cpu1"] == ["node.hostname == h3", "node.role != manager"]
    assert got["peer"] == []
    assert got["nic"] == got["r1"] == ["node.labels.zone == a"]
    assert got[COORDINATOR] == ["node.labels.zone == a"]       # the readers' placement
    assert placements(topo, parse_place(["coordinator=node.hostname == h1"]))[
        COORDINATOR] == ["node.hostname == h1"]
    # any: no placement section at all (Swarm may run it anywhere).
    doc = stack_services(topo, "s.topology.json", place=parse_place(["all=any"]))
    assert all("placement" not in s["deploy"] for s in doc["services"].values())
    assert labels_needed({}) == []


@pytest.mark.parametrize("bad", ["cpu", "cpu=", "=x == y", "cpu=node.hostname h2",
                                 "cpu=== x"])
def test_place_rejects_what_is_not_a_constraint(bad: str) -> None:
    with pytest.raises(ValueError, match="--place"):
        parse_place([bad])


def test_place_rejects_an_unknown_role_or_actor() -> None:
    topo = compose_topology(load_scenario(None))
    with pytest.raises(ValueError, match="not a role, an actor"):
        placements(topo, parse_place(["cpu7=node.hostname == h"]))


def test_stack_file_is_yaml_that_reads_back_as_the_document() -> None:
    sc = load_scenario(DOCKER / "chaos.toml")
    text = render_stack(sc, "x.topology.json", image="img:1")
    topo = compose_topology(sc)
    assert yaml.safe_load(text) == {
        **stack_services(topo, "x.topology.json"),
        "services": {n: {**s, "image": "${RXPATH_IMAGE:-img:1}"}
                     for n, s in stack_services(topo, "x.topology.json")["services"].items()}}
    # The header's one-node labelling command is shell, continued line by line.
    assert "#   docker node update --label-add rxpath.cpu=true \\\n#     --label-add" in text


def test_compose_swarm_writes_stack_topology_and_keys(tmp_path: Path) -> None:
    out = tmp_path / "stack.yml"
    result = CliRunner().invoke(app, ["compose", "--swarm", "-o", str(out),
                                      "--place", "peer=node.hostname == wire"])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert '- "node.labels.rxpath.cpu == true"' in text
    assert '- "node.hostname == wire"' in text
    assert "endpoint_mode" in text and '"dnsrr"' in text
    # The same topology as the compose file's: service names are the addresses.
    compose_out = tmp_path / "c" / "compose.yml"
    assert CliRunner().invoke(app, ["compose", "-o", str(compose_out)]).exit_code == 0
    assert topology_file_for(out).read_text() == topology_file_for(compose_out).read_text()
    secrets = tmp_path / "stack.secrets"
    assert (secrets / "private" / "cpu0.key_secret").stat().st_mode & 0o077 == 0
    assert (secrets / "public" / "launcher.key").is_file()


def test_compose_place_errors_exit_2_and_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "stack.yml"
    result = CliRunner().invoke(app, ["compose", "--swarm", "-o", str(out),
                                      "--place", "cpu9=node.hostname == x"])
    assert result.exit_code == 2 and "cpu9" in result.output
    assert not out.exists() and not topology_file_for(out).exists()
    result = CliRunner().invoke(app, ["compose", "-o", str(out),
                                      "--place", "cpu=node.hostname == x"])
    assert result.exit_code == 2 and "--swarm" in result.output


# --- a real run: every actor a separate `rxpath actor` process, coordinated over tcp ------

def _loopback_topology(sc_path: Path | None, keys_dir: Path) -> dict[str, Any]:
    topo = compose_topology(load_scenario(sc_path))
    names = ["launcher", *topo["actors"]]
    generate_keys(keys_dir, names)
    topo["curve"] = {"keys_dir": str(keys_dir)}
    ports = dict(zip(names, free_tcp_ports(len(names)), strict=True))
    topo["bind_host"] = "127.0.0.1"
    topo["launcher"] = {"host": "127.0.0.1", "port": ports["launcher"]}
    for name, entry in topo["actors"].items():
        entry.update(host="127.0.0.1", port=ports[name])
    return topo


def _spawn_actor(topo_path: Path, name: str, role: str, run_dir: Path,
                 state: Path) -> subprocess.Popen[bytes]:
    log = open(run_dir / f"{name}.out", "ab")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "actor", role, "--config", str(topo_path),
         "--name", name, "--run-dir", str(run_dir), "--state-dir", str(state)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.timeout(120)
def test_coordinator_runs_external_actors_and_a_killed_cpu_rejoins(tmp_path: Path) -> None:
    topo = _loopback_topology(DOCKER / "chaos.toml", tmp_path / "keys")
    topo_path = tmp_path / "topology.json"
    topo_path.write_text(json.dumps(topo))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    coord_out = open(run_dir / "coordinator.out", "wb")  # noqa: SIM115
    coord = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "coordinate", "--config", str(topo_path),
         "--run-dir", str(run_dir), "--ready-timeout", "60"],
        cwd=ROOT, stdout=coord_out, stderr=subprocess.STDOUT, start_new_session=True)
    procs = {n: _spawn_actor(topo_path, n, e["role"], run_dir, tmp_path / "state")
             for n, e in topo["actors"].items()}
    try:
        # Wait until traffic flows, then kill cpu0 and start it again, as a restart
        # policy would (same state dir: incarnation 1).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if b'"event":"started"' in (run_dir / "coordinator.out").read_bytes():
                break
            assert coord.poll() is None, (run_dir / "coordinator.out").read_text()
            time.sleep(0.05)
        else:
            pytest.fail("the coordinator never started the traffic")
        time.sleep(1.0)
        os.killpg(procs["cpu0"].pid, signal.SIGKILL)
        assert procs["cpu0"].wait(10) == -signal.SIGKILL
        procs["cpu0"] = _spawn_actor(topo_path, "cpu0", "cpu", run_dir, tmp_path / "state")
        code = coord.wait(100)
        summary = json.loads((run_dir / "summary.json").read_text())
        out = (run_dir / "coordinator.out").read_text()
        assert summary["rejoined"] == {"cpu0": 1}, out[-3000:]
        assert summary["reason"] == "complete", out[-3000:]
        assert [f["intact"] for f in summary["flows"]] == [True, True], summary["flows"]
        assert code == 0
        for name, p in procs.items():
            assert p.wait(20) == 0, f"{name} exit {p.returncode}"
    finally:
        for p in [coord, *procs.values()]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        coord_out.close()
