"""Scenario files: TOML in, a validated :class:`~actors.scenario.Scenario` out.

The dataclasses themselves live in ``actors/scenario.py``; this module owns the TOML
parsing, validation, error messages and command-line overrides.

A scenario describes one run: the kernel profile, sysctls, the NIC, the CPUs, the
stack's listening socket, the remote peer and its flows, the wire between them, and
the reader processes. Every key is optional. What is left out comes from the embedded
default topology (``cli/default.toml``, shipped with the package) by these rules:

- scalar keys and plain tables (``[nic]``, ``[cpu]``, ``[stack]``, ``[peer]``,
  ``[log]``, ``[sysctl]``) fall back key by key to their documented defaults (the
  defaults of the profile for ``[sysctl]``);
- ``[[flows]]``, ``[[readers]]``, ``[impairments]`` and ``[ack_impairments]`` are taken
  whole: a file that gives one of them describes all of it, and inside it a missing key
  is zero or its plain default (so ``[impairments]`` alone is a clean wire), while a file
  that leaves one out gets the default topology's;
- when a file gives ``[[flows]]`` but no ``[[readers]]``, each flow gets one reader with
  default settings, named by the flow's ``reader`` key.

Entries of an array are numbered from 0 in error messages (``readers[1]`` is the second
``[[readers]]``). The k-th entry's name defaults to ``f<k+1>`` / ``r<k+1>``, a flow's
``sport`` to ``40001 + k`` and its ``reader`` to ``r<k+1>``, a reader's ``flow`` to
``f<k+1>``, so the first entry's defaults are ``f1``, ``40001``, ``r1``.

Validation is strict: an unknown key anywhere, a wrong type, a value out of range, a
duplicate name or port, or a reference to a flow or reader that does not exist raises
:class:`ConfigError`, whose message names the file, the key path and what was expected.
"""

from __future__ import annotations

import copy
import difflib
import functools
import ipaddress
import json
import math
import re
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

from actors.peer.impairments import EventAction
from actors.profiles import HZ_CHOICES, PROFILES, Profile, Sysctls, get_profile, sysctls_for
from actors.scenario import (
    CHAOS_ACTIONS,
    CHAOS_ROLES,
    DEFAULT_SOURCE,
    EVENT_ACTIONS,
    EVENT_MATCHES,
    LOG_LEVELS,
    PCAP_PREFIX,
    PROBE_STYLES,
    AckImpairmentsConfig,
    ChaosConfig,
    ChaosEventConfig,
    CpuConfig,
    EventMatch,
    FlowConfig,
    ImpairmentsConfig,
    LinuxSenderConfig,
    LogConfig,
    LogLevel,
    NicConfig,
    PeerConfig,
    ProbeStyle,
    ReaderConfig,
    Scenario,
    ScriptedEventConfig,
    StackConfig,
    WireConfig,
    event_key_applies,
)
from actors.stack.skb import DEVICE_KINDS, DeviceKind
from protocol.constants import TCP_MAX_WSCALE, TCP_MIN_MSS

OVERRIDE_SOURCE = "command line"

# setsockopt takes an int and doubles it; keep the doubled value an int.
_SO_RCVBUF_MAX = (2**31 - 1) // 2
_TCP_MAX_MSS = 65535 - 20 - 20  # the largest IPv4 datagram minus both headers
_RSS_KEY_MIN_BYTES = 40  # 36 bytes of IPv4 4-tuple input need a 40-byte Toeplitz key
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_NAME_EXPECTED = "a name matching [a-z][a-z0-9_-]* of at most 32 characters"

# Kernel ranges of the sysctls a scenario may set; unlisted integer sysctls take >= 0.
_SYSCTL_RANGES: dict[str, tuple[int, int | None]] = {
    "tcp_low_latency": (0, 1),
    "tcp_moderate_rcvbuf": (0, 1),
    "tcp_sack": (0, 1),
    "tcp_dsack": (0, 1),
    "tcp_timestamps": (0, 2),
    "tcp_window_scaling": (0, 1),
    "tcp_app_win": (0, 31),
    "tcp_comp_sack_nr": (0, 255),
    "tcp_backlog_ack_defer": (0, 1),
    "tcp_shrink_window": (0, 1),
    "netdev_budget": (1, None),
    "dev_weight": (1, None),
}
_SYSCTL_TYPES: dict[str, Any] = typing.get_type_hints(Sysctls)


class ConfigError(Exception):
    """A scenario that cannot be used, with where and why.

    ``source`` is the file (or ``<default>`` / ``command line``), ``key`` the dotted key
    path (``readers[1].think_us``) or None, ``detail`` what was expected and found.
    """

    def __init__(self, source: str, key: str | None, detail: str, *,
                 line: int | None = None, column: int | None = None) -> None:
        self.source = source
        self.key = key
        self.detail = detail
        self.line = line
        self.column = column
        where = source
        if line is not None:
            where += f":{line}" + (f":{column}" if column is not None else "")
        if key:
            where += f": {key}"
        super().__init__(f"{where}: {detail}")


# -- command-line overrides ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Overrides:
    """What the command line may change on top of a scenario file.

    ``sysctl`` holds ``key=value`` strings as typed by the user, e.g.
    ``tcp_low_latency=1`` or ``tcp_rmem=4096,131072,6291456`` (commas or spaces).
    """

    profile: str | None = None
    seed: int | None = None
    duration: float | None = None
    sysctl: tuple[str, ...] = ()
    wire: str | None = None  # ``--wire``: [wire] source (a pcap path relative to the cwd)
    # ``--set KEY.PATH=VALUE`` as typed: any scenario key, the value a TOML value.
    sets: tuple[str, ...] = ()


# Kernel sysctl names whose Sysctls field says its unit.
SYSCTL_FIELD_FOR_KERNEL_NAME = {"tcp_invalid_ratelimit": "tcp_invalid_ratelimit_ms"}


def parse_sysctl_assignment(text: str) -> tuple[str, int | tuple[int, ...]]:
    """``"key=value"`` -> (key, typed value); raises :class:`ConfigError` (command line)."""
    key, sep, raw = text.partition("=")
    key = key.strip().removeprefix("sysctl.")
    # sysctl(8) spells them net.ipv4.tcp_rmem; accept that and keep the last part.
    key = key.rsplit(".", 1)[-1]
    key = SYSCTL_FIELD_FOR_KERNEL_NAME.get(key, key)
    if not sep or not key:
        raise ConfigError(OVERRIDE_SOURCE, "sysctl",
                          f"expected key=value, got {_show(text)}")
    path = f"sysctl.{key}"
    if key not in _SYSCTL_TYPES:
        raise ConfigError(OVERRIDE_SOURCE, path, _unknown_key_detail(key, _SYSCTL_TYPES))
    parts = [p for p in re.split(r"[\s,]+", raw.strip()) if p]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if typing.get_origin(_SYSCTL_TYPES[key]) is tuple:
        if not numbers:
            raise ConfigError(OVERRIDE_SOURCE, path,
                              f"expected {_sysctl_expected(key)}, got {_show(raw)}")
        return key, tuple(numbers)
    if len(numbers) != 1:
        raise ConfigError(OVERRIDE_SOURCE, path,
                          f"expected {_sysctl_expected(key)}, got {_show(raw)}")
    return key, numbers[0]


def _apply_overrides(raw: dict[str, Any], overrides: Overrides) -> None:
    """Check each override on its own (errors name the command line), then put it in."""
    top = _Table(OVERRIDE_SOURCE, {}, "", ())
    if overrides.profile is not None:
        top.data["profile"] = overrides.profile
        raw["profile"] = top.choice("profile", "legacy", tuple(PROFILES))
    if overrides.seed is not None:
        top.data["seed"] = overrides.seed
        raw["seed"] = top.integer("seed", 1, lo=0)
    if overrides.duration is not None:
        top.data["duration"] = overrides.duration
        raw["duration"] = top.number("duration", 60.0, lo=0.0, lo_open=True)
    if overrides.sysctl:
        section = raw.get("sysctl")
        section = dict(section) if isinstance(section, dict) else {}
        sysctl = _Table(OVERRIDE_SOURCE, {}, "sysctl", tuple(_SYSCTL_TYPES))
        for text in overrides.sysctl:
            key, value = parse_sysctl_assignment(text)
            sysctl.data[key] = list(value) if isinstance(value, tuple) else value
            _sysctl_value(sysctl, key)
            section[key] = sysctl.data[key]
        raw["sysctl"] = section
    if overrides.wire is not None:
        section = raw.get("wire")
        section = dict(section) if isinstance(section, dict) else {}
        section["source"] = _wire_source(_Table(OVERRIDE_SOURCE, {"source": overrides.wire},
                                                "wire", ("source",)), Path.cwd())
        raw["wire"] = section
    for text in overrides.sets:
        path, value = parse_set_assignment(text)
        _set_key(raw, path, value)


# -- --set KEY.PATH=VALUE ----------------------------------------------------------------

_KEY_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")
_SET_EXPECTED = "KEY.PATH=VALUE, e.g. nic.queues=4 or readers[0].think_us=50"


def parse_key_path(key: str) -> list[str | int] | None:
    """``readers[1].think_us`` -> ["readers", 1, "think_us"]; None if it is not one."""
    tokens: list[str | int] = []
    pos = 0
    while pos < len(key):
        dot = bool(tokens) and key[pos] == "."
        pos += dot
        m = _KEY_TOKEN.match(key, pos)
        # A name follows a dot (or starts the path); an index follows a name or index.
        if m is None or (m.group(1) is not None and bool(tokens) != dot) \
                or (m.group(2) is not None and (not tokens or dot)):
            return None
        tokens.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    return tokens or None


def parse_set_value(key: str, text: str) -> Any:
    """A ``--set`` value as TOML reads it (``4``, ``1.5``, ``true``, ``"x"``, ``[1, 2]``);
    a bare word without quotes is taken as a string, so ``log.level=debug`` works."""
    text = text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if text and not re.search(r"[\s\"'\[\]{}=,#]", text):
            return text
    raise ConfigError(OVERRIDE_SOURCE, key, "expected a TOML value (4, 1.5, true, \"text\", "
                      f"[1, 2]), got {json.dumps(text)}")


def parse_set_assignment(text: str) -> tuple[str, Any]:
    """``"KEY.PATH=VALUE"`` -> (key path, value); raises :class:`ConfigError`."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or parse_key_path(key) is None:
        raise ConfigError(OVERRIDE_SOURCE, "--set", f"expected {_SET_EXPECTED}, "
                          f"got {_show(text)}")
    return key, parse_set_value(key, raw)


def _set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Put ``value`` at ``key`` in the document, making the tables on the way; the
    builder then checks it like a key of the file (and errors name the command line)."""
    tokens = parse_key_path(key)
    assert tokens is not None
    cur: Any = raw
    done = ""
    for i, tok in enumerate(tokens):
        last = i == len(tokens) - 1
        if isinstance(tok, int):
            if not isinstance(cur, list):
                raise ConfigError(OVERRIDE_SOURCE, done, f"expected an array of tables to "
                                  f"index, got {_show(cur)} (setting {key})")
            if tok > len(cur):
                n = len(cur)
                raise ConfigError(OVERRIDE_SOURCE, f"{done}[{tok}]", f"expected an index <= "
                                  f"{n} ({done} has {n} entr{'y' if n == 1 else 'ies'}; "
                                  f"{done}[{n}] adds one)")
            if tok == len(cur):
                cur.append({})
            here = f"{done}[{tok}]"
        else:
            if not isinstance(cur, dict):
                raise ConfigError(OVERRIDE_SOURCE, done, f"expected a table to hold {tok}, "
                                  f"got {_show(cur)} (setting {key})")
            here = f"{done}.{tok}" if done else tok
            if last:
                cur[tok] = value
                return
            if tok not in cur:
                cur[tok] = [] if isinstance(tokens[i + 1], int) else {}
        if last:
            cur[tok] = value
            return
        cur = cur[tok]
        done = here


def _delete_key(raw: dict[str, Any], key: str) -> bool:
    """Remove ``key`` from the document; False if it is not there."""
    tokens = parse_key_path(key)
    if tokens is None:
        return False
    cur: Any = raw
    for tok in tokens[:-1]:
        if isinstance(tok, int):
            if not isinstance(cur, list) or tok >= len(cur):
                return False
        elif not isinstance(cur, dict) or tok not in cur:
            return False
        cur = cur[tok]
    tok = tokens[-1]
    if isinstance(tok, int):
        if not isinstance(cur, list) or tok >= len(cur):
            return False
        cur.pop(tok)
        return True
    if not isinstance(cur, dict) or tok not in cur:
        return False
    del cur[tok]
    return True


def _key_within(key: str, outer: str) -> bool:
    """True if ``key`` is ``outer`` or inside it (``nic.queues`` is within ``nic``)."""
    return key == outer or key.startswith((outer + ".", outer + "["))


# -- loading ---------------------------------------------------------------------------

DEFAULT_TOPOLOGY = "default.toml"  # package data of cli/, beside this module


@functools.cache
def default_topology_toml() -> str:
    """The text of the embedded default topology, ``cli/default.toml``."""
    return resources.files("cli").joinpath(DEFAULT_TOPOLOGY).read_text(encoding="utf-8")


def _default_raw() -> dict[str, Any]:
    return _parse_toml(default_topology_toml(), DEFAULT_SOURCE)

_WHOLE_SECTIONS = ("flows", "readers", "impairments", "ack_impairments")


def load_scenario(path: str | Path | None = None,
                  overrides: Overrides | None = None) -> Scenario:
    """Load and validate a scenario file; ``None`` is the embedded default topology."""
    if path is None:
        raw = _default_raw()
        return _from_raw(raw, DEFAULT_SOURCE, overrides, with_defaults=False)
    return parse_scenario(_read_text(path), str(path), overrides)


def _read_text(path: str | Path) -> str:
    source = str(path)
    try:
        return Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(source, None, "no such file") from None
    except IsADirectoryError:
        raise ConfigError(source, None, "a directory, not a scenario file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, None, f"not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read: {exc.strerror or exc}") from None


# An error at a key the file does not hold (or the same key again) ends the search.
_MAX_ERRORS = 100


def scenario_errors(path: str | Path | None,
                    overrides: Overrides | None = None) -> tuple[Scenario | None,
                                                                 list[ConfigError]]:
    """Every error of a scenario file, not only the first: (the scenario or None, errors).

    The validator stops at the first error; to find the next one, the key it named is
    taken out of the document (so it falls back to its default) and the document is
    checked again. An error that names no key of the file (bad TOML, a missing section,
    a key of the default topology or the command line) ends the list, as does one that
    names a key already reported: its default then fails too, so it is the same error.
    """
    if path is None:
        try:
            return load_scenario(None, overrides), []
        except ConfigError as err:
            return None, [err]
    source = str(path)
    try:
        raw = _parse_toml(_read_text(path), source)
    except ConfigError as err:
        return None, [err]
    errors: list[ConfigError] = []
    reported: set[str] = set()
    while len(errors) < _MAX_ERRORS:
        try:
            scenario = _from_raw(copy.deepcopy(raw), source, overrides)
        except ConfigError as err:
            errors.append(err)
            key = err.key
            if err.source != source or not key or key in reported or not _delete_key(raw, key):
                break
            reported.add(key)
            continue
        return (None if errors else scenario), errors
    return None, errors


def parse_scenario(text: str, source: str = "<string>",
                   overrides: Overrides | None = None) -> Scenario:
    """Validate a scenario given as TOML text; ``source`` names it in error messages."""
    return _from_raw(_parse_toml(text, source), source, overrides)


def scenario_from_data(data: Mapping[str, Any], source: str = "<dict>") -> Scenario:
    """Validate already-parsed data (a TOML document, or a :meth:`Scenario.to_dict`
    result) with the same defaults and errors as a file."""
    return _from_raw(copy.deepcopy(dict(data)), source, None)


def _from_raw(raw: dict[str, Any], source: str, overrides: Overrides | None,
              with_defaults: bool = True) -> Scenario:
    """Fill whole sections the document leaves out from the default, then validate."""
    defaulted: frozenset[str] = frozenset()
    if with_defaults:
        default_raw = _default_raw()
        derive_readers = "flows" in raw and "readers" not in raw
        missing = {k for k in _WHOLE_SECTIONS if k not in raw and k in default_raw}
        if derive_readers:
            missing.discard("readers")
        for key in missing:
            raw[key] = default_raw[key]
        defaulted = frozenset(missing)
    if overrides is not None:
        _apply_overrides(raw, overrides)
    sets = tuple(key for key, _ in map(parse_set_assignment, overrides.sets)) \
        if overrides is not None else ()
    return _build(raw, source, defaulted, sets)


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        lines = text.splitlines()
        if match:
            line, column = int(match.group(1)), int(match.group(2))
            message = message[:match.start()]
        else:
            message = re.sub(r"\s*\(at end of document\)$", "", message)
            line, column = max(len(lines), 1), None
        detail = f"invalid TOML: {message}"
        if 1 <= line <= len(lines):
            detail += f"\n    {line} | {lines[line - 1]}"
            if column is not None:
                detail += "\n    " + " " * len(str(line)) + " | " + " " * (column - 1) + "^"
        raise ConfigError(source, None, detail, line=line, column=column) from None


def _build(raw: dict[str, Any], source: str, defaulted: frozenset[str],
           sets: tuple[str, ...] = ()) -> Scenario:
    try:
        return _replay_flows(_Builder(raw, source).scenario())
    except ConfigError as err:
        for key in sets:
            if err.key and (_key_within(err.key, key) or _key_within(key, err.key)):
                # The value came from --set: say so, not the file it was put in.
                raise ConfigError(OVERRIDE_SOURCE, err.key,
                                  f"{err.detail} (from --set {key})") from None
        section = (err.key or "").split(".", 1)[0].split("[", 1)[0]
        if section in defaulted:
            header = f"[[{section}]]" if section in ("flows", "readers") else f"[{section}]"
            raise ConfigError(
                err.source, err.key,
                f"{err.detail} (this file gives no {header}, so it comes from the "
                "default topology)") from None
        raise


# -- validation helpers ------------------------------------------------------------------


def _show(value: Any) -> str:
    """A value as a TOML user would write it, for 'got ...' in messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, dict):
        return "a table"
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    else:
        return f"a {type(value).__name__}"  # TOML dates and times
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_key_detail(key: str, allowed: Mapping[str, Any] | Sequence[str]) -> str:
    names = sorted(allowed)
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {_show(close[0])}?)" if close else ""
    return f"unknown key{hint}; expected one of: {', '.join(names)}"


def _range_text(kind: str, lo: float | None, hi: float | None, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"{kind} in [{lo}, {hi}]"
    if lo is not None:
        return f"{kind} {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{kind} <= {hi}"
    return kind


class _Table:
    """One TOML table being read: typed getters that know the key path for errors.

    ``allowed`` lists the keys the table may hold; empty means any (override checks).
    """

    def __init__(self, source: str, data: Any, path: str, allowed: Sequence[str]) -> None:
        self.source = source
        self.path = path
        if not isinstance(data, dict):
            raise ConfigError(source, path or None, f"expected a table, got {_show(data)}")
        self.data: dict[str, Any] = data
        for key in data:
            if allowed and key not in allowed:
                raise ConfigError(source, self.key(key), _unknown_key_detail(key, allowed))

    def key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, expected: str, value: Any = None, *,
              show: bool = True) -> ConfigError:
        got = f", got {_show(value)}" if show else ""
        return ConfigError(self.source, self.key(key), f"expected {expected}{got}")

    def integer(self, key: str, default: int, *, lo: int | None = None,
                hi: int | None = None) -> int:
        if key not in self.data:
            return default
        value = self.data[key]
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.error(key, _range_text("an integer", lo, hi), value)
        return cast(int, value)

    def number(self, key: str, default: float, *, lo: float | None = 0.0,
               hi: float | None = None, lo_open: bool = False) -> float:
        if key not in self.data:
            return default
        value = self.data[key]
        expected = _range_text("a number", _num(lo), _num(hi), lo_open)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise self.error(key, expected, value)
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise self.error(key, expected, value)
        if hi is not None and value > hi:
            raise self.error(key, expected, value)
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, bool):
            raise self.error(key, "true or false", value)
        return value

    def string(self, key: str, default: str) -> str:
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, str) or "\n" in value:
            raise self.error(key, "a one-line string", value)
        return value

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, str) or value not in choices:
            raise self.error(key, "one of " + ", ".join(json.dumps(c) for c in choices), value)
        return value

    def name(self, key: str, default: str) -> str:
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, str) or not _NAME_RE.match(value):
            raise self.error(key, _NAME_EXPECTED, value)
        return value

    def ipv4(self, key: str, default: str) -> str:
        if key not in self.data:
            return default
        value = self.data[key]
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            raise self.error(key, "an IPv4 address like \"10.0.0.1\"", value) from None

    def array_of_tables(self, key: str) -> list[Any]:
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise self.error(key, f"an array of tables ([[{self.key(key)}]])", value)
        return value

    def sub(self, key: str, allowed: Sequence[str]) -> _Table:
        return _Table(self.source, self.data.get(key, {}), self.key(key), allowed)


def _num(value: float | None) -> float | int | None:
    """1.0 -> 1 in messages: 'a number in [0, 1]' reads better than '[0.0, 1.0]'."""
    if value is not None and float(value).is_integer():
        return int(value)
    return value


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _sysctl_expected(key: str) -> str:
    if typing.get_origin(_SYSCTL_TYPES[key]) is tuple:
        n = len(typing.get_args(_SYSCTL_TYPES[key]))
        return f"an array of {n} integers >= 1 (min <= default <= max)"
    lo, hi = _SYSCTL_RANGES.get(key, (0, None))
    return _range_text("an integer", lo, hi)


def _sysctl_value(table: _Table, key: str) -> int | tuple[int, ...]:
    value = table.data[key]
    if typing.get_origin(_SYSCTL_TYPES[key]) is tuple:
        n = len(typing.get_args(_SYSCTL_TYPES[key]))
        ok = (isinstance(value, list) and len(value) == n
              and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
              and all(a <= b for a, b in pairwise(value)))
        if not ok:
            raise table.error(key, _sysctl_expected(key), value)
        return tuple(value)
    if key == "hz":
        value = table.integer(key, 0, lo=1)
        if value not in HZ_CHOICES:
            raise table.error(key, "CONFIG_HZ: one of " + ", ".join(map(str, HZ_CHOICES)),
                              value)
        return value
    lo, hi = _SYSCTL_RANGES.get(key, (0, None))
    return table.integer(key, 0, lo=lo, hi=hi)


_TOP_KEYS = ("profile", "seed", "duration", "description", "sysctl", "nic", "cpu", "stack",
             "peer", "flows", "impairments", "ack_impairments", "readers", "log", "chaos",
             "linux_senders", "wire")


class _Builder:
    """Reads the raw document section by section, in dependency order."""

    def __init__(self, raw: dict[str, Any], source: str) -> None:
        self.source = source
        self.top = _Table(source, raw, "", _TOP_KEYS)

    def scenario(self) -> Scenario:
        top = self.top
        profile = top.choice("profile", "legacy", tuple(PROFILES))
        seed = top.integer("seed", 1, lo=0)
        duration = top.number("duration", 60.0, lo=0.0, lo_open=True)
        description = top.string("description", "")
        sysctl = self._sysctl(get_profile(profile))
        nic = self._nic()
        cpu = self._cpu(nic)
        stack = self._stack()
        peer = self._peer(stack)
        flows = self._flows(duration)
        readers = self._readers(flows, duration)
        self._check_flow_readers(flows, readers)
        flow_names = {f.name for f in flows}
        impairments = self._impairments(flow_names)
        ack_impairments = self._ack_impairments(flow_names)
        log = LogConfig(level=cast(LogLevel, top.sub("log", _field_names(LogConfig)).choice(
            "level", "info", LOG_LEVELS)))
        linux_senders = self._linux_senders(flows)
        flows = self._file_lengths(flows, linux_senders)
        return Scenario(
            profile=profile, seed=seed, duration=duration, description=description,
            sysctl=sysctl, nic=nic, cpu=cpu, stack=stack, peer=peer, flows=flows,
            impairments=impairments, ack_impairments=ack_impairments, readers=readers,
            log=log, chaos=self._chaos(), linux_senders=linux_senders,
            wire=self._wire(), source=self.source)

    def _wire(self) -> WireConfig:
        """``[wire] source``: "peer", or "pcap:FILE" (relative to the scenario file)."""
        t = self.top.sub("wire", _field_names(WireConfig))
        if "source" not in t.data:
            return WireConfig()
        here = Path(self.source).parent if Path(self.source).is_file() else Path.cwd()
        return WireConfig(source=_wire_source(t, here))

    def _linux_senders(self, flows: tuple[FlowConfig, ...]) -> tuple[LinuxSenderConfig, ...]:
        """``[[linux_senders]]``: real senders in the run's namespace. A sender without
        ``flows`` takes every flow no other sender names; each flow has exactly one."""
        flow_names = [f.name for f in flows]
        entries = self._entries("linux_senders", LinuxSenderConfig)
        owner: dict[str, int] = {}
        raw: list[tuple[_Table, str, list[str] | None, tuple[str, ...]]] = []
        seen: dict[str, int] = {}
        for i, t in enumerate(entries):
            name = t.name("name", f"s{i + 1}")
            if name in seen:
                raise t.error("name", f"a sender name not already used (linux_senders"
                              f"[{seen[name]}] has it)", name)
            seen[name] = i
            command = t.data.get("command", [])
            if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
                raise t.error("command", "an array of strings (argv; empty: the built-in "
                              "sender)", command)
            chosen: list[str] | None = None
            if "flows" in t.data:
                chosen = t.data["flows"]
                if (not isinstance(chosen, list) or not chosen
                        or any(f not in flow_names for f in chosen)):
                    raise t.error("flows", "a non-empty array of flow names (" + ", ".join(
                        json.dumps(n) for n in flow_names) + ")", chosen)
                for f in chosen:
                    if f in owner:
                        raise t.error("flows", f"flows no other sender has "
                                      f"(linux_senders[{owner[f]}] has {f!r})", chosen)
                    owner[f] = i
            raw.append((t, name, chosen, tuple(command)))
        out: list[LinuxSenderConfig] = []
        rest = [f for f in flow_names if f not in owner]
        here = Path(self.source).parent if Path(self.source).is_file() else Path.cwd()
        for t, name, chosen, command in raw:
            if chosen is None:
                chosen, rest = rest, []
            if not chosen:
                raise t.error("flows", "at least one flow (every flow already has a sender)",
                              show=False)
            if command and len(chosen) != 1:
                raise t.error("flows", "exactly one flow for a command sender (its 4-tuple "
                              "is {src}:{sport} -> {dst}:{dport})", chosen)
            out.append(LinuxSenderConfig(name=name, flows=tuple(chosen), command=command,
                                         file=_sender_file(t, here)))
        if out and rest:
            raise ConfigError(self.source, "linux_senders", "expected a sender for every "
                              "flow; none sends " + ", ".join(rest))
        return tuple(out)

    def _file_lengths(self, flows: tuple[FlowConfig, ...],
                      senders: tuple[LinuxSenderConfig, ...]) -> tuple[FlowConfig, ...]:
        """A flow whose sender sends a file is as long as the file (``bytes`` may say so,
        nothing else)."""
        size = {f: Path(s.file).stat().st_size for s in senders if s.file for f in s.flows}
        if not size:
            return flows
        items = {item.get("name", f"f{i + 1}"): (i, item)
                 for i, item in enumerate(self.top.array_of_tables("flows"))}
        out = []
        for f in flows:
            if f.name in size:
                i, item = items.get(f.name, (0, {}))
                if "bytes" in item and item["bytes"] != size[f.name]:
                    raise ConfigError(self.source, f"flows[{i}].bytes", f"expected the size "
                                      f"of the file its sender sends ({size[f.name]}), or no "
                                      f"bytes key, got {_show(item['bytes'])}")
                f = replace(f, bytes=size[f.name])
            out.append(f)
        return tuple(out)

    def _chaos(self) -> ChaosConfig:
        t = self.top.sub("chaos", _field_names(ChaosConfig))
        kill = t.data.get("kill", [])
        if not isinstance(kill, list) or any(k not in CHAOS_ROLES for k in kill):
            raise t.error("kill", "an array of roles from " + ", ".join(CHAOS_ROLES), kill)
        seed = t.integer("seed", -1, lo=0) if "seed" in t.data else None
        schedule = []
        for i, raw in enumerate(t.array_of_tables("schedule")):
            e = _Table(self.source, raw, f"chaos.schedule[{i}]",
                       _field_names(ChaosEventConfig))
            target = e.string("target", "")
            if not target:
                raise e.error("target", "an actor name, a role, or a link \"a->b\"", target)
            schedule.append(ChaosEventConfig(
                at_ms=e.number("at_ms", 0.0), action=e.choice("action", "kill", CHAOS_ACTIONS),
                target=target, delay_ms=e.number("delay_ms", 0.0)))
        return ChaosConfig(kill=tuple(kill), every_ms=t.number("every_ms", 0.0), seed=seed,
                           schedule=tuple(schedule))

    def _sysctl(self, profile: Profile) -> Sysctls:
        t = self.top.sub("sysctl", tuple(_SYSCTL_TYPES))
        values: dict[str, Any] = {key: _sysctl_value(t, key) for key in t.data}
        return sysctls_for(profile, **values)

    def _nic(self) -> NicConfig:
        t = self.top.sub("nic", _field_names(NicConfig))
        d = NicConfig()
        rx_usecs = t.integer("rx_usecs", d.rx_usecs, lo=0)
        rx_frames = t.integer("rx_frames", d.rx_frames, lo=0)
        if rx_usecs == 0 and rx_frames > 1:
            # ethtool: rx-usecs 0 disables the timer, so a lone frame would never interrupt.
            raise t.error("rx_frames", "0 or 1 while nic.rx_usecs = 0 (a lone frame would "
                          "never raise an interrupt)", rx_frames)
        return NicConfig(
            queues=t.integer("queues", d.queues, lo=1),
            ring_size=t.integer("ring_size", d.ring_size, lo=1),
            rx_usecs=rx_usecs, rx_frames=rx_frames,
            rss_key=self._rss_key(t, d.rss_key),
            cost_per_frame_us=t.number("cost_per_frame_us", d.cost_per_frame_us),
            device=cast(DeviceKind, t.choice("device", d.device, DEVICE_KINDS)),
            gro=t.boolean("gro", d.gro))

    def _rss_key(self, t: _Table, default: bytes) -> bytes:
        if "rss_key" not in t.data:
            return default
        value = t.data["rss_key"]
        expected = (f"a hex string of at least {_RSS_KEY_MIN_BYTES} bytes "
                    "(':' between bytes allowed)")
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            key = bytes.fromhex(value.replace(":", ""))
        except ValueError:
            raise t.error("rss_key", expected, value) from None
        if len(key) < _RSS_KEY_MIN_BYTES:
            raise t.error("rss_key", expected, value)
        return key

    def _cpu(self, nic: NicConfig) -> CpuConfig:
        t = self.top.sub("cpu", _field_names(CpuConfig))
        d = CpuConfig()
        count = t.integer("count", d.count, lo=1)
        if count > nic.queues:
            raise t.error("count", f"at most nic.queues ({nic.queues}): every cpu polls at "
                          "least one RX queue", count)
        return CpuConfig(
            count=count,
            cost_per_segment_us=t.number("cost_per_segment_us", d.cost_per_segment_us),
            cost_per_byte_ns=t.number("cost_per_byte_ns", d.cost_per_byte_ns))

    def _stack(self) -> StackConfig:
        t = self.top.sub("stack", _field_names(StackConfig))
        d = StackConfig()
        return StackConfig(
            cost_per_segment_us=t.number("cost_per_segment_us", d.cost_per_segment_us),
            cost_per_byte_ns=t.number("cost_per_byte_ns", d.cost_per_byte_ns),
            rcvbuf=t.integer("rcvbuf", d.rcvbuf, lo=0, hi=_SO_RCVBUF_MAX),
            rcvlowat=t.integer("rcvlowat", d.rcvlowat, lo=1),
            listen_port=t.integer("listen_port", d.listen_port, lo=1, hi=65535),
            listen_backlog=t.integer("listen_backlog", d.listen_backlog, lo=0),
            address=t.ipv4("address", d.address))

    def _peer(self, stack: StackConfig) -> PeerConfig:
        t = self.top.sub("peer", _field_names(PeerConfig))
        d = PeerConfig()
        address = t.ipv4("address", d.address)
        if address == stack.address:
            raise t.error("address", f"an address other than stack.address ({stack.address})",
                          address)
        return PeerConfig(
            address=address,
            mss=t.integer("mss", d.mss, lo=TCP_MIN_MSS, hi=_TCP_MAX_MSS),
            wscale=t.integer("wscale", d.wscale, lo=0, hi=TCP_MAX_WSCALE),
            sack=t.boolean("sack", d.sack),
            timestamps=t.boolean("timestamps", d.timestamps),
            probe_style=cast(ProbeStyle, t.choice("probe_style", d.probe_style, PROBE_STYLES)),
            resegment=t.boolean("resegment", d.resegment))

    def _entries(self, key: str, cls: type) -> list[_Table]:
        items = self.top.array_of_tables(key)
        return [_Table(self.source, item, f"{key}[{i}]", _field_names(cls))
                for i, item in enumerate(items)]

    def _start_ms(self, t: _Table, duration: float) -> float:
        start = t.number("start_ms", 0.0)
        if start >= duration * 1000:
            raise t.error("start_ms", f"a number >= 0 and < duration ({_num(duration * 1000)} ms)",
                          _num(start))
        return start

    def _flows(self, duration: float) -> tuple[FlowConfig, ...]:
        flows: list[FlowConfig] = []
        seen_names: dict[str, int] = {}
        seen_ports: dict[int, int] = {}
        seen_readers: dict[str, int] = {}
        for i, t in enumerate(self._entries("flows", FlowConfig)):
            name = t.name("name", f"f{i + 1}")
            if name in seen_names:
                raise t.error("name", f"a flow name not already used (flows[{seen_names[name]}] "
                              "has it)", name)
            sport = t.integer("sport", 40001 + i, lo=1, hi=65535)
            if sport in seen_ports:
                raise t.error("sport", f"a port not already used (flows[{seen_ports[sport]}] "
                              "has it)", sport)
            reader = t.name("reader", f"r{i + 1}")
            seen_names[name] = i
            seen_ports[sport] = i
            # A reader shared by several flows is an epoll server: its [[readers]] entry
            # lists them (``flows``), which _check_flow_readers verifies.
            seen_readers.setdefault(reader, i)
            flows.append(FlowConfig(
                name=name, bytes=t.integer("bytes", 1_000_000, lo=1), sport=sport,
                start_ms=self._start_ms(t, duration), reader=reader))
        if not flows:
            raise ConfigError(self.source, "flows", "expected at least one [[flows]] entry")
        return tuple(flows)

    def _readers(self, flows: tuple[FlowConfig, ...],
                 duration: float) -> tuple[ReaderConfig, ...]:
        if "readers" not in self.top.data:
            # [[flows]] without [[readers]]: each flow's own reader, default settings.
            by_reader: dict[str, list[str]] = {}
            for f in flows:
                by_reader.setdefault(f.reader, []).append(f.name)
            return tuple(ReaderConfig(name=r, flow=names[0],
                                      flows=tuple(names) if len(names) > 1 else ())
                         for r, names in by_reader.items())
        flow_names = [f.name for f in flows]
        readers: list[ReaderConfig] = []
        seen: dict[str, int] = {}
        for i, t in enumerate(self._entries("readers", ReaderConfig)):
            d = ReaderConfig()
            name = t.name("name", f"r{i + 1}")
            if name in seen:
                raise t.error("name", f"a reader name not already used (readers[{seen[name]}] "
                              "has it)", name)
            seen[name] = i
            served = self._reader_flows(t, i, flow_names)
            readers.append(ReaderConfig(
                name=name, flow=served[0], flows=served if len(served) > 1 else (),
                read_size=t.integer("read_size", d.read_size, lo=1),
                think_us=t.number("think_us", d.think_us),
                hold_lock_us=t.number("hold_lock_us", d.hold_lock_us),
                copy_ns_per_byte=t.number("copy_ns_per_byte", d.copy_ns_per_byte),
                nonblocking=t.boolean("nonblocking", d.nonblocking),
                waitall=t.boolean("waitall", d.waitall),
                start_ms=self._start_ms(t, duration)))
        if not readers:
            raise ConfigError(self.source, "readers", "expected at least one [[readers]] entry")
        return tuple(readers)

    def _reader_flows(self, t: _Table, i: int, flow_names: list[str]) -> tuple[str, ...]:
        """A reader's ``flow``, or the ``flows`` an epoll server reads (not both)."""
        def known(key: str, value: Any) -> str:
            if not isinstance(value, str) or value not in flow_names:
                raise ConfigError(self.source, t.key(key), "expected the name of a flow ("
                                  + ", ".join(json.dumps(n) for n in flow_names)
                                  + f"), got {_show(value)}")
            return value

        if "flows" not in t.data:
            return (known("flow", t.name("flow", f"f{i + 1}")),)
        if "flow" in t.data:
            raise t.error("flows", "either flow or flows, not both", show=False)
        value = t.data["flows"]
        if not isinstance(value, list) or not value:
            raise t.error("flows", "a non-empty array of flow names", value)
        served = tuple(known(f"flows[{k}]", v) for k, v in enumerate(value))
        if len(set(served)) != len(served):
            raise t.error("flows", "flow names without repeats", value)
        return served

    def _check_flow_readers(self, flows: tuple[FlowConfig, ...],
                            readers: tuple[ReaderConfig, ...]) -> None:
        by_name = {r.name: r for r in readers}
        for i, flow in enumerate(flows):
            key = f"flows[{i}].reader"
            reader = by_name.get(flow.reader)
            if reader is None:
                names = ", ".join(json.dumps(r.name) for r in readers)
                raise ConfigError(self.source, key, f"expected the name of a reader ({names}), "
                                  f"got {_show(flow.reader)}")
            if flow.name not in reader.served_flows:
                raise ConfigError(self.source, key, f"expected a reader of flow "
                                  f"{_show(flow.name)}, got {_show(flow.reader)} (which "
                                  f"reads {', '.join(map(_show, reader.served_flows))})")

    def _events(self, parent: _Table, flow_names: set[str],
                default_match: EventMatch) -> tuple[ScriptedEventConfig, ...]:
        items = parent.array_of_tables("events")
        events = []
        for i, item in enumerate(items):
            t = _Table(self.source, item, parent.key(f"events[{i}]"),
                       _field_names(ScriptedEventConfig))
            if "action" not in t.data:
                raise t.error("action", "one of " + ", ".join(
                    json.dumps(a) for a in EVENT_ACTIONS) + " (required)", show=False)
            action = cast(EventAction, t.choice("action", "drop", EVENT_ACTIONS))
            if "index" not in t.data:
                raise t.error("index", "an integer >= 1 (required: the k-th matching frame)",
                              show=False)
            index = t.integer("index", 1, lo=1)
            flow: str | None = None
            if "flow" in t.data:
                flow = t.name("flow", "")
                if flow not in flow_names:
                    raise t.error("flow", "the name of a flow (" + ", ".join(
                        json.dumps(n) for n in sorted(flow_names)) + ")", flow)
            for key in ("hold_segments", "max_hold_ms", "delay_ms"):
                if key in t.data and not event_key_applies(action, key):
                    wanted = "hold" if key != "delay_ms" else "delay"
                    raise t.error(key, f"{key} only with action = \"{wanted}\", got it with "
                                  f"action = {_show(action)}", show=False)
            delay_ms = 0.0
            if action == "delay":
                if "delay_ms" not in t.data:
                    raise t.error("delay_ms", "a number > 0 (required for action = \"delay\")",
                                  show=False)
                delay_ms = t.number("delay_ms", 0.0, lo=0.0, lo_open=True)
            hold_segments = 0
            max_hold_ms: float | None = None
            if action == "hold":
                hold_segments = t.integer("hold_segments", 1, lo=1)
                if "max_hold_ms" in t.data:
                    max_hold_ms = t.number("max_hold_ms", 0.0)
            events.append(ScriptedEventConfig(
                action=action, index=index, flow=flow,
                match=cast(EventMatch, t.choice("match", default_match, EVENT_MATCHES)),
                hold_segments=hold_segments, delay_ms=delay_ms, max_hold_ms=max_hold_ms))
        return tuple(events)

    def _impairments(self, flow_names: set[str]) -> ImpairmentsConfig:
        t = self.top.sub("impairments", _field_names(ImpairmentsConfig))
        d = ImpairmentsConfig()
        return ImpairmentsConfig(
            loss=t.number("loss", d.loss, hi=1.0),
            duplicate=t.number("duplicate", d.duplicate, hi=1.0),
            reorder=t.number("reorder", d.reorder, hi=1.0),
            corrupt=t.number("corrupt", d.corrupt, hi=1.0),
            delay_ms=t.number("delay_ms", d.delay_ms),
            jitter_ms=t.number("jitter_ms", d.jitter_ms),
            reorder_gap_ms=t.number("reorder_gap_ms", d.reorder_gap_ms),
            events=self._events(t, flow_names, "data"))

    def _ack_impairments(self, flow_names: set[str]) -> AckImpairmentsConfig:
        t = self.top.sub("ack_impairments", _field_names(AckImpairmentsConfig))
        d = AckImpairmentsConfig()
        return AckImpairmentsConfig(
            loss=t.number("loss", d.loss, hi=1.0),
            delay_ms=t.number("delay_ms", d.delay_ms),
            jitter_ms=t.number("jitter_ms", d.jitter_ms),
            events=self._events(t, flow_names, "any"))


def default_scenario() -> Scenario:
    """The embedded default topology, as ``rxpath run`` without a config uses it."""
    return load_scenario(None)


# -- [wire]: replaying a capture ----------------------------------------------------------


def _wire_source(t: _Table, here: Path) -> str:
    """A checked ``wire.source``: "peer", or "pcap:" and the capture's absolute path."""
    value = t.string("source", "peer")
    if value == "peer":
        return value
    if not value.startswith(PCAP_PREFIX) or not value[len(PCAP_PREFIX):]:
        raise t.error("source", '"peer" or "pcap:FILE" (a capture to replay)', value)
    path = Path(value[len(PCAP_PREFIX):]).expanduser()
    path = path if path.is_absolute() else here / path
    if not path.is_file():
        raise ConfigError(t.source, t.key("source"), f"no such capture file: {path}")
    return PCAP_PREFIX + str(path.resolve())


def _sender_file(t: _Table, here: Path) -> str:
    """A checked ``linux_senders[i].file``: a readable, non-empty file, made absolute."""
    if "file" not in t.data:
        return ""
    value = t.string("file", "")
    path = Path(value).expanduser()
    path = path if path.is_absolute() else here / path
    try:
        size = path.stat().st_size if path.is_file() else -1
        with open(path, "rb"):
            pass
    except OSError:
        size = -1
    if size <= 0:
        raise t.error("file", "a readable, non-empty file for the sender to send (relative "
                      "to the scenario file)", value)
    return str(path.resolve())


def _replay_flows(sc: Scenario) -> Scenario:
    """A replay scenario's flows: one per connection of the capture (see
    :mod:`actors.replay.model`), each as long as the client's captured stream; flows with
    no connection are left out, and readers left with no flow too."""
    if sc.replay is None:
        return sc
    from actors.replay import scenario_plan
    from protocol.pcap import PcapError

    key = "wire.source"
    if sc.linux_senders:
        raise ConfigError(sc.source, key, "expected one wire source: a capture replay and "
                          "[[linux_senders]] both feed the NIC")
    if sc.stack.listen_port == 0:
        raise ConfigError(sc.source, "stack.listen_port", "expected a listening port for "
                          "the replayed connections, got 0")
    try:
        p = scenario_plan(sc)
    except PcapError as exc:
        raise ConfigError(sc.source, key, f"cannot replay the capture: {exc}") from None
    if not p.flows:
        raise ConfigError(sc.source, key, f"the capture {sc.replay} holds no TCP connection "
                          f"to replay (a SYN and data from the client); counted: "
                          + ", ".join(f"{k} {v}" for k, v in p.counts.items() if v))
    length = {fp.target.name: len(fp.stream) for fp in p.flows}
    flows = tuple(replace(f, bytes=length[f.name], start_ms=0.0)
                  for f in sc.flows if f.name in length)
    readers = []
    for r in sc.readers:
        served = tuple(f for f in r.served_flows if f in length)
        if served:
            readers.append(replace(r, flow=served[0], flows=served if len(served) > 1 else ()))
    return replace(sc, flows=flows, readers=tuple(readers))


# -- TOML out ------------------------------------------------------------------------------


def to_toml(data: Mapping[str, Any]) -> str:
    """A document (a :meth:`Scenario.to_dict` result) as TOML that loads back to it."""
    lines: list[str] = []
    _toml_table(data, "", lines)
    return "\n".join(lines).strip("\n") + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping)
                                                          for v in value)


def _toml_table(data: Mapping[str, Any], path: str, lines: list[str]) -> None:
    """Scalars first (they belong to the header above them), then sub-tables."""
    nested = []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, Mapping) or _is_table_array(value):
            nested.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in nested:
        full = f"{path}.{_toml_key(key)}" if path else _toml_key(key)
        if isinstance(value, Mapping):
            lines.extend(["", f"[{full}]"])
            _toml_table(value, full, lines)
        else:
            for item in value:
                lines.extend(["", f"[[{full}]]"])
                _toml_table(item, full, lines)
