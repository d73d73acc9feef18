"""docker/e2e.sh and docker/e2e-swarm.sh with a real Docker engine: the default topology
under docker-compose, then a chaos run that kills cpu0's container mid-transfer; and the
chaos run as a Docker Swarm stack on a single-node swarm the script makes (and leaves).
Skipped (with the script's reason) only when no Docker engine can be started on this
machine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[1] / "docker"
NO_ENGINE_EXIT = 77


def _run_e2e(script: Path, name: str, timeout_s: float) -> None:
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    proc = subprocess.run(["bash", str(script)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode == NO_ENGINE_EXIT:
        reason = next((line for line in proc.stdout.splitlines()
                       if line.startswith("NO_DOCKER_ENGINE:")), "no Docker engine")
        pytest.skip(reason)
    assert proc.returncode == 0, f"{script.name} exit {proc.returncode}\n{proc.stderr[-6000:]}"
    assert any(line.startswith(f"{name} [") and line.endswith(": PASS")
               for line in proc.stderr.splitlines()), proc.stderr[-3000:]


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_docker_compose_end_to_end() -> None:
    _run_e2e(DOCKER / "e2e.sh", "e2e", 880)


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_docker_swarm_end_to_end() -> None:
    _run_e2e(DOCKER / "e2e-swarm.sh", "e2e-swarm", 580)
