"""Entry point of the ``rxpath`` console script.

The app lives in :mod:`cli.app`; each command is a module of its own that registers on
it, imported here so that ``rxpath COMMAND`` finds it. To add a command, write
``cli/<name>.py`` with ``@app.command()`` and add it to the import below.
"""

from __future__ import annotations

from cli import (  # noqa: F401  (register their commands on app)
    actor_cmd,
    bench,
    chaos,
    compile,
    compose,
    coordinate,
    drill,
    report_html,
    run,
    stat,
    trace,
    validate,
)
from cli.app import CONFIG_ERROR_EXIT, app, fail_config

__all__ = ["CONFIG_ERROR_EXIT", "app", "fail_config", "main"]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
