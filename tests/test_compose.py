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
from typer.testing import CliRunner

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
