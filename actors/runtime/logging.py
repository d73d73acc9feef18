"""Structured JSON-lines logging for actors and the launcher.

Every line is one JSON object with ``event``, ``level``, ``name``, ``role``,
``instance``, ``pid``, ``mono_ns`` (``time.monotonic_ns()``, comparable across the
processes of one host and with envelope ``ts_ns``) and ``wall`` (epoch seconds), plus
the call's keyword fields.  Lines go to ``<run_dir>/logs/<name>.jsonl`` or, in a
container, to stdout (``stdout=True``).

Cheap enough to leave on: the logger is a structlog filtering logger, so calls below
the configured level are no-ops.  Per-segment events are ``debug`` events guarded by
a switch, so the hot path pays one attribute test::

    log = make_logger("cpu1", role="cpu", instance=1, run_dir=run_dir)
    if log_settings.per_segment:
        log.debug("napi_poll_segment", seq=seg.seq)

:func:`make_logger` builds a logger without touching structlog's global config
(safe inside a test process); :func:`configure_process_logging` also makes it the
process default so role modules can call ``structlog.get_logger()``.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": std_logging.DEBUG, "info": std_logging.INFO,
           "warning": std_logging.WARNING, "error": std_logging.ERROR,
           "critical": std_logging.CRITICAL}


@dataclass
class LogSettings:
    """What one process logs, and where."""

    level: str = "info"
    stdout: bool = False          # containers: log to stdout instead of a file
    per_segment: bool = False     # the switch for per-segment (debug) events

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> LogSettings:
        d = d or {}
        return cls(level=str(d.get("level", "info")), stdout=bool(d.get("stdout", False)),
                   per_segment=bool(d.get("per_segment", False)))

    def effective_level(self) -> int:
        if self.per_segment:
            return std_logging.DEBUG
        try:
            return _LEVELS[self.level.lower()]
        except KeyError:
            raise ValueError(f"unknown log level {self.level!r}") from None


def log_path(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / "logs" / f"{name}.jsonl"


def _add_clock(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    event_dict["mono_ns"] = time.monotonic_ns()
    event_dict["wall"] = round(time.time(), 6)
    return event_dict


def _json_dumps(obj: Any, **kw: Any) -> str:
    # `default=repr` (replacing the renderer's own fallback): a log line must never
    # raise for an odd value (bytes, enums, ...).
    kw["default"] = repr
    kw.setdefault("separators", (",", ":"))
    return json.dumps(obj, **kw)


def _processors() -> list[Any]:
    return [
        structlog.processors.add_log_level,
        _add_clock,
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(serializer=_json_dumps),
    ]


def open_log_stream(run_dir: str | Path | None, name: str, settings: LogSettings) -> TextIO:
    if settings.stdout or run_dir is None:
        return sys.stdout
    path = log_path(run_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Line-buffered: the tail is on disk if the process dies, for the launcher to show.
    return open(path, "a", buffering=1, encoding="utf-8")


def make_logger(name: str, *, role: str, instance: int, run_dir: str | Path | None,
                settings: LogSettings | None = None,
                stream: TextIO | None = None) -> Any:
    """A bound structlog logger writing JSON lines; no global structlog state is changed."""
    settings = settings or LogSettings()
    out = stream if stream is not None else open_log_stream(run_dir, name, settings)
    return structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=_processors(),
        wrapper_class=structlog.make_filtering_bound_logger(settings.effective_level()),
        cache_logger_on_first_use=True,
    ).bind(name=name, role=role, instance=instance, pid=os.getpid())


def configure_process_logging(name: str, *, role: str, instance: int,
                              run_dir: str | Path | None,
                              settings: LogSettings | None = None) -> Any:
    """Make this process's structlog default match :func:`make_logger`; returns a logger."""
    settings = settings or LogSettings()
    out = open_log_stream(run_dir, name, settings)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *_processors()],
        wrapper_class=structlog.make_filtering_bound_logger(settings.effective_level()),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(name=name, role=role, instance=instance,
                                           pid=os.getpid())
    return structlog.get_logger()
