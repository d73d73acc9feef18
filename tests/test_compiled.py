"""The optional mypyc build (``rxpath compile``): same rules, and never a stale build."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.compile import build
from protocol.compiled import (
    MANIFEST,
    MODULES,
    ROOT,
    extensions,
    remove_build,
    source_hash,
    stale_sources,
)

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _copy_project(dest: Path) -> Path:
    for part in ("actors", "protocol", "cli", "tests", "configs", "pyproject.toml"):
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns(
                "__pycache__", "*.so", "compiled.json"))
        else:
            shutil.copy(src, dest / part)
    return dest


def _fake_build(root: Path) -> list[Path]:
    """A manifest and an extension file beside each source, as `build` leaves them."""
    exts = []
    for rel in MODULES:
        src = root / rel
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(f"# {rel}\n")
        ext = src.with_name(src.stem + SUFFIX)
        ext.write_bytes(b"")
        exts.append(ext)
    manifest = root / MANIFEST.relative_to(ROOT)
    manifest.write_text(json.dumps({"sources": {r: source_hash(root / r) for r in MODULES}}))
    return exts


def test_a_build_whose_sources_are_unchanged_is_fresh(tmp_path: Path) -> None:
    _fake_build(tmp_path)
    assert stale_sources(tmp_path) == []


def test_an_edited_source_makes_the_build_stale_and_removing_it_leaves_the_sources(
        tmp_path: Path) -> None:
    exts = _fake_build(tmp_path)
    edited = tmp_path / "actors/stack/tcp_input.py"
    edited.write_text(edited.read_text() + "# a new rule\n")
    assert stale_sources(tmp_path) == ["actors/stack/tcp_input.py"]
    removed = remove_build(tmp_path)
    assert sorted(removed) == sorted(exts)
    assert not any(e.exists() for e in exts)
    assert not (tmp_path / MANIFEST.relative_to(ROOT)).exists()
    assert all((tmp_path / rel).exists() for rel in MODULES)
    assert stale_sources(tmp_path) == []  # no build, nothing stale


def test_removing_a_build_removes_what_the_manifest_says_was_built(tmp_path: Path) -> None:
    _fake_build(tmp_path)
    dropped = tmp_path / ("protocol/sockops" + SUFFIX)  # compiled once, since dropped
    dropped.write_bytes(b"")
    manifest = tmp_path / MANIFEST.relative_to(ROOT)
    recorded = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**recorded, "extensions": ["protocol/sockops" + SUFFIX]}))
    assert dropped in remove_build(tmp_path)
    assert not dropped.exists()


def test_without_a_build_nothing_is_stale(tmp_path: Path) -> None:
    assert stale_sources(tmp_path) == []


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_the_compiled_model_passes_the_model_tests_and_delivers_the_stream(
        tmp_path: Path) -> None:
    pytest.importorskip("mypyc")
    root = _copy_project(tmp_path / "project")
    build(root)
    assert len(extensions(root)) == len(MODULES) + 1  # + the shared library
    env = {**os.environ, "PYTHONPATH": str(root)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], cwd=root, env=env, text=True,
                              capture_output=True, timeout=600, check=False)

    bench = run("-c", "from actors.profiles import PROFILES\n"
                "from cli.modelbench import run_model_benchmark\n"
                "from protocol.compiled import is_compiled\n"
                "assert is_compiled()\n"
                "for p in PROFILES.values(): print(run_model_benchmark(p, 3000))")
    assert bench.returncode == 0, bench.stderr  # the bench checks every byte read
    tests = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not integration",
                "tests/test_stack_rules.py", "tests/test_stack_properties.py",
                "tests/test_stack_lecture.py", "tests/test_napi.py", "tests/test_wire.py",
                "tests/test_sender.py", "tests/test_tcp_options.py", "tests/test_seq.py")
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert " passed" in tests.stdout and "failed" not in tests.stdout

    # Edit a compiled module's source: the next start runs the source, and says so.
    src = root / "actors/stack/tcp_output.py"
    src.write_text(src.read_text() + "\n# edited\n")
    after = run("-c", "from protocol.compiled import is_compiled; print(is_compiled())")
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() == "False"
    assert "changed since `rxpath compile`" in after.stderr
    assert extensions(root) == []
