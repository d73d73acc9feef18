"""``rxpath compile``: build the pure modules as C extensions with mypyc (optional).

Same sources, same rules, same tests; only faster (``rxpath bench`` shows by how much
and says whether the model ran compiled). ``--clean`` goes back to pure Python.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

from cli.app import app
from protocol.compiled import (
    GROUP,
    MANIFEST,
    MODULES,
    ROOT,
    extensions,
    remove_build,
    source_hash,
)

# Run in a child so setuptools' argument parsing and mypyc's caches stay out of ours.
_BUILD = """
import sys
from setuptools import setup
from mypyc.build import mypycify
group, temp, *modules = sys.argv[1:]
setup(name="rxpath-compiled", script_args=["build_ext", "--inplace", "--build-temp", temp],
      ext_modules=mypycify(modules, opt_level="3", group_name=group))
"""


def build(root: Path = ROOT, *, verbose: bool = False) -> None:
    """Compile :data:`MODULES` under ``root`` in place and record their hashes."""
    try:
        import mypyc  # noqa: F401
    except ImportError:
        raise RuntimeError("rxpath compile needs mypyc: pip install mypy") from None
    remove_build(root)
    with tempfile.TemporaryDirectory(prefix="rxpath-compile-") as temp:
        proc = subprocess.run(
            # mypyc writes its C sources to ROOT/build (ignored by git).
            [sys.executable, "-c", _BUILD, GROUP, temp, *MODULES], cwd=root,
            capture_output=not verbose, text=True, check=False)
        if proc.returncode != 0:
            tail = "\n".join(((proc.stdout or "") + (proc.stderr or "")).splitlines()[-30:])
            raise RuntimeError(f"mypyc failed (exit {proc.returncode}):\n{tail}")
    manifest = root / MANIFEST.relative_to(ROOT)
    manifest.write_text(json.dumps(
        {"sources": {rel: source_hash(root / rel) for rel in MODULES},
         "extensions": [str(p.relative_to(root)) for p in extensions(root)]}, indent=1) + "\n")


@app.command("compile")
def compile_cmd(
    clean_only: bool = typer.Option(False, "--clean",
                                    help="Remove the compiled modules: run pure Python."),
    verbose: bool = typer.Option(False, "--verbose", help="Show the compiler's output."),
) -> None:
    """Compile the kernel model and the per-segment code with mypyc, in place.

    The pure-Python sources stay the reference; editing one after compiling removes the
    compiled modules (with a warning) the next time rxpath starts. Needs mypy (in the test extras)
    and a C compiler. Example: rxpath compile && rxpath bench
    """
    if clean_only:
        removed = remove_build()
        typer.echo(f"removed {len(removed)} compiled modules: the pure-Python sources run")
        return
    t0 = time.monotonic()
    typer.echo(f"compiling {len(MODULES)} modules with mypyc (about a minute) ...")
    try:
        build(verbose=verbose)
    except RuntimeError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"compiled {len(extensions())} extensions in {time.monotonic() - t0:.0f} s; "
               "`rxpath compile --clean` goes back to pure Python")
