"""Scenario loading and validation (cli/config.py) and `rxpath validate`."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from actors.nic.model import MICROSOFT_RSS_KEY
from actors.peer.impairments import ScriptedEvent
from actors.profiles import LEGACY, MODERN, Sysctls
from actors.scenario import DEFAULT_SOURCE, Scenario, StackConfig
from actors.stack.skb import SOCK_MIN_RCVBUF
from cli.config import (
    ConfigError,
    Overrides,
    default_scenario,
    default_topology_toml,
    load_scenario,
    parse_scenario,
    parse_sysctl_assignment,
    scenario_from_data,
)
from cli.main import app, fail_config

ROOT = Path(__file__).resolve().parents[1]

FULL_TOML = """\
profile = "modern"
seed = 7
duration = 12.5
description = "everything spelled out"

[sysctl]
tcp_low_latency = 1
tcp_rmem = [4096, 65536, 1048576]
netdev_budget = 600
dev_weight = 16

[nic]
queues = 4
ring_size = 128
rx_usecs = 50
rx_frames = 8
rss_key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2021222324252627"
cost_per_frame_us = 0.5

[cpu]
count = 2
cost_per_segment_us = 1.5
cost_per_byte_ns = 0.25

[stack]
cost_per_segment_us = 2
cost_per_byte_ns = 0.1
rcvbuf = 65536
rcvlowat = 1000
listen_port = 8080
address = "192.168.1.2"

[peer]
address = "192.168.1.1"
mss = 1448
wscale = 9
sack = false
timestamps = false
probe_style = "data"
resegment = false

[[flows]]
name = "bulk"
bytes = 2_000_000
sport = 50000
start_ms = 10
reader = "slow"

[[flows]]
name = "small"
bytes = 1000
sport = 50001
reader = "fast"

[impairments]
loss = 0.05
duplicate = 0.01
reorder = 0.1
corrupt = 0.001
delay_ms = 2
jitter_ms = 0.5
reorder_gap_ms = 3

[[impairments.events]]
flow = "bulk"
index = 3
action = "hold"
hold_segments = 2
max_hold_ms = 50

[[impairments.events]]
flow = "small"
index = 1
action = "delay"
delay_ms = 7.5

[[impairments.events]]
index = 9
action = "corrupt"
match = "any"

[ack_impairments]
loss = 0.02
delay_ms = 1
jitter_ms = 0.2

[[ack_impairments.events]]
flow = "bulk"
index = 5
action = "drop"

[[readers]]
name = "slow"
flow = "bulk"
read_size = 4096
think_us = 100
hold_lock_us = 2500
copy_ns_per_byte = 0.3
nonblocking = false
waitall = true
start_ms = 5

[[readers]]
name = "fast"
flow = "small"
nonblocking = true

[[readers]]
name = "helper"
flow = "bulk"

[log]
level = "debug"
"""


def write(tmp_path: Path, text: str, name: str = "x.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(text: str, overrides: Overrides | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_scenario(text, "configs/x.toml", overrides)
    return str(info.value)


# -- the default topology -------------------------------------------------------------------


def test_default_topology() -> None:
    s = load_scenario(None)
    assert s == default_scenario()
    assert s.source == DEFAULT_SOURCE
    assert s.profile == "legacy" and s.kernel_profile is LEGACY
    assert s.sysctl == LEGACY.default_sysctls
    assert [(f.name, f.bytes, f.reader) for f in s.flows] == [
        ("f1", 4_000_000, "r1"), ("f2", 4_000_000, "r2")]
    assert [(r.name, r.flow) for r in s.readers] == [("r1", "f1"), ("r2", "f2")]
    assert (s.nic.queues, s.cpu.count) == (2, 2)
    assert s.queue_to_cpu == (0, 1)
    imp = s.impairments
    assert (imp.loss, imp.duplicate, imp.reorder, imp.corrupt) == (0.01, 0.01, 0.02, 0.002)
    assert {e.action for e in imp.events} >= {"duplicate", "hold", "drop"}
    assert all(e.index <= 20 for e in imp.events)  # early on
    assert s.description


def test_default_builds_the_wire_models() -> None:
    s = default_scenario()
    wire = s.wire_impairments()
    assert (wire.loss, wire.duplicate, wire.reorder, wire.corrupt) == (0.01, 0.01, 0.02, 0.002)
    assert wire.reorder_gap_ns == 1_000_000
    assert {e.action for e in wire.events} == {"duplicate", "hold", "drop"}
    hold = next(e for e in wire.events if e.action == "hold")
    assert hold.hold_segments >= 1 and hold.flow is None
    ack = s.ack_wire_impairments()
    assert not ack.active
    assert wire.seed != ack.seed  # the two directions draw independently


def test_empty_file_is_the_default_topology(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, ""))
    assert s == replace(default_scenario(), description="")  # a description is per file
    assert s.source == str(tmp_path / "x.toml")


# -- the exact messages -------------------------------------------------------------------


@pytest.mark.parametrize(("text", "message"), [
    ('[[readers]]\nname = "r1"\n[[readers]]\nname = "r2"\nthink_us = "slow"\n',
     'configs/x.toml: readers[1].think_us: expected a number >= 0, got "slow"'),
    ("seed = 1.5\n", "configs/x.toml: seed: expected an integer >= 0, got 1.5"),
    ("duration = 0\n", "configs/x.toml: duration: expected a number > 0, got 0"),
    ('profile = "new"\n',
     'configs/x.toml: profile: expected one of "legacy", "modern", got "new"'),
    ('description = "a\\nb"\n',
     'configs/x.toml: description: expected a one-line string, got "a\\nb"'),
    ("[nic]\nqueues = 0\n", "configs/x.toml: nic.queues: expected an integer >= 1, got 0"),
    ("[nic]\nqueues = true\n",
     "configs/x.toml: nic.queues: expected an integer >= 1, got true"),
    ('[nic]\nrss_key = "abcd"\n',
     "configs/x.toml: nic.rss_key: expected a hex string of at least 40 bytes "
     "(':' between bytes allowed), got \"abcd\""),
    ('[nic]\ndevice = "eth0"\n',
     'configs/x.toml: nic.device: expected one of "nic", "tun", got "eth0"'),
    ("[nic]\ndevice = 1\n", 'configs/x.toml: nic.device: expected one of "nic", "tun", got 1'),
    ("[nic]\nrx_frames = 4\n",
     "configs/x.toml: nic.rx_frames: expected 0 or 1 while nic.rx_usecs = 0 "
     "(a lone frame would never raise an interrupt), got 4"),
    ("[cpu]\ncount = 3\n",
     "configs/x.toml: cpu.count: expected at most nic.queues (2): every cpu polls at least "
     "one RX queue, got 3"),
    ("[stack]\nlisten_port = 70000\n",
     "configs/x.toml: stack.listen_port: expected an integer in [1, 65535], got 70000"),
    ('[peer]\naddress = "10.0.0.256"\n',
     'configs/x.toml: peer.address: expected an IPv4 address like "10.0.0.1", '
     'got "10.0.0.256"'),
    ('[peer]\naddress = "10.0.0.2"\n',
     'configs/x.toml: peer.address: expected an address other than stack.address '
     '(10.0.0.2), got "10.0.0.2"'),
    ("[peer]\nwscale = 15\n",
     "configs/x.toml: peer.wscale: expected an integer in [0, 14], got 15"),
    ('[peer]\nprobe_style = "zero"\n',
     'configs/x.toml: peer.probe_style: expected one of "linux", "data", got "zero"'),
    ("[peer]\nsack = 1\n", "configs/x.toml: peer.sack: expected true or false, got 1"),
    ("[sysctl]\ntcp_rmem = [4096, 87380]\n",
     "configs/x.toml: sysctl.tcp_rmem: expected an array of 3 integers >= 1 "
     "(min <= default <= max), got [4096, 87380]"),
    ("[sysctl]\ntcp_rmem = [4096, 87380, 1000]\n",
     "configs/x.toml: sysctl.tcp_rmem: expected an array of 3 integers >= 1 "
     "(min <= default <= max), got [4096, 87380, 1000]"),
    ("[sysctl]\ntcp_low_latency = 2\n",
     "configs/x.toml: sysctl.tcp_low_latency: expected an integer in [0, 1], got 2"),
    ("[sysctl]\nnetdev_budget = 0\n",
     "configs/x.toml: sysctl.netdev_budget: expected an integer >= 1, got 0"),
    ("[impairments]\nloss = 1.5\n",
     "configs/x.toml: impairments.loss: expected a number in [0, 1], got 1.5"),
    ("[impairments]\ndelay_ms = inf\n",
     "configs/x.toml: impairments.delay_ms: expected a number >= 0, got inf"),
    ('[log]\nlevel = "loud"\n',
     'configs/x.toml: log.level: expected one of "debug", "info", "warning", "error", '
     'got "loud"'),
    ("nic = 3\n", "configs/x.toml: nic: expected a table, got 3"),
    ("flows = 3\n", "configs/x.toml: flows: expected an array of tables ([[flows]]), got 3"),
])
def test_error_messages(text: str, message: str) -> None:
    assert error_of(text) == message


def test_error_names_file_key_and_expectation(tmp_path: Path) -> None:
    path = write(tmp_path, '[[readers]]\nname = "r1"\n[[readers]]\nthink_us = "slow"\n')
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    err = info.value
    assert err.source == str(path)
    assert err.key == "readers[1].think_us"
    assert err.detail == 'expected a number >= 0, got "slow"'
    assert str(err) == f'{path}: readers[1].think_us: expected a number >= 0, got "slow"'


# -- references and duplicates -----------------------------------------------------------


FLOWS_AB = """\
[[flows]]
name = "a"
reader = "ra"
[[flows]]
name = "b"
reader = "rb"
"""


def test_readers_derived_from_flows() -> None:
    s = parse_scenario(FLOWS_AB, "configs/x.toml")
    assert [(r.name, r.flow) for r in s.readers] == [("ra", "a"), ("rb", "b")]
    assert s.readers[0].read_size == 65536
    # per-index defaults: the second flow's sport follows the first's
    assert [f.sport for f in s.flows] == [40001, 40002]


def test_flow_names_a_missing_reader() -> None:
    text = FLOWS_AB + '[[readers]]\nname = "ra"\nflow = "a"\n'
    assert error_of(text) == \
        'configs/x.toml: flows[1].reader: expected the name of a reader ("ra"), got "rb"'


def test_reader_names_a_missing_flow() -> None:
    text = FLOWS_AB + '[[readers]]\nname = "ra"\nflow = "zz"\n'
    assert error_of(text) == \
        'configs/x.toml: readers[0].flow: expected the name of a flow ("a", "b"), got "zz"'


def scenario_of(text: str) -> Scenario:
    return parse_scenario(text, "configs/x.toml")


def test_flows_sharing_a_reader_make_it_an_epoll_server() -> None:
    text = '[[flows]]\nname = "a"\nreader = "r"\n[[flows]]\nname = "b"\nreader = "r"\n'
    (reader,) = scenario_of(text).readers
    assert (reader.name, reader.flow, reader.served_flows) == ("r", "a", ("a", "b"))


def test_reader_flows_lists_an_epoll_servers_connections() -> None:
    text = FLOWS_AB.replace('reader = "rb"', 'reader = "ra"') + (
        '[[readers]]\nname = "ra"\nflows = ["a", "b"]\n')
    sc = scenario_of(text)
    assert sc.reader("ra").served_flows == ("a", "b")
    assert [r.name for r in sc.readers_of("b")] == ["ra"]


@pytest.mark.parametrize(("readers", "message"), [
    ('flows = ["a", "zz"]', 'readers[0].flows[1]: expected the name of a flow ("a", "b"), '
                            'got "zz"'),
    ('flows = []', 'readers[0].flows: expected a non-empty array of flow names, got []'),
    ('flows = ["a", "a"]', 'readers[0].flows: expected flow names without repeats, '
                           'got ["a", "a"]'),
    ('flow = "a"\nflows = ["a", "b"]', 'readers[0].flows: expected either flow or flows, '
                                       'not both'),
])
def test_reader_flows_errors(readers: str, message: str) -> None:
    text = FLOWS_AB.replace('reader = "rb"', 'reader = "ra"') + (
        f'[[readers]]\nname = "ra"\n{readers}\n')
    assert error_of(text) == "configs/x.toml: " + message


def test_flow_reader_must_read_that_flow() -> None:
    text = FLOWS_AB + ('[[readers]]\nname = "ra"\nflow = "b"\n'
                       '[[readers]]\nname = "rb"\nflow = "b"\n')
    assert error_of(text) == ('configs/x.toml: flows[0].reader: expected a reader of flow '
                              '"a", got "ra" (which reads "b")')


def test_readers_may_share_a_flow() -> None:
    text = FLOWS_AB + ('[[readers]]\nname = "ra"\nflow = "a"\n'
                       '[[readers]]\nname = "rb"\nflow = "b"\n'
                       '[[readers]]\nname = "extra"\nflow = "a"\n')
    s = parse_scenario(text, "configs/x.toml")
    assert [r.name for r in s.readers_of("a")] == ["ra", "extra"]


@pytest.mark.parametrize(("text", "message"), [
    ('[[flows]]\nname = "a"\n[[flows]]\nname = "a"\nreader = "r2"\n',
     'configs/x.toml: flows[1].name: expected a flow name not already used (flows[0] has it), '
     'got "a"'),
    ('[[flows]]\nsport = 5\n[[flows]]\nsport = 5\n',
     "configs/x.toml: flows[1].sport: expected a port not already used (flows[0] has it), "
     "got 5"),
    (FLOWS_AB + '[[readers]]\nname = "ra"\nflow = "a"\n[[readers]]\nname = "ra"\nflow = "b"\n',
     'configs/x.toml: readers[1].name: expected a reader name not already used (readers[0] '
     'has it), got "ra"'),
    ('[[flows]]\nname = "Bad Name"\n',
     'configs/x.toml: flows[0].name: expected a name matching [a-z][a-z0-9_-]* of at most 32 '
     'characters, got "Bad Name"'),
    ("[[flows]]\nbytes = 0\n",
     "configs/x.toml: flows[0].bytes: expected an integer >= 1, got 0"),
    ("duration = 1\n[[flows]]\nstart_ms = 1000\n",
     "configs/x.toml: flows[0].start_ms: expected a number >= 0 and < duration (1000 ms), "
     "got 1000"),
])
def test_duplicates_and_ranges_in_arrays(text: str, message: str) -> None:
    assert error_of(text) == message


def test_error_in_a_section_taken_from_the_default_says_so() -> None:
    # Only r1 given: the default flows still want r2.
    assert error_of('[[readers]]\nname = "r1"\nflow = "f1"\n') == (
        'configs/x.toml: flows[1].reader: expected the name of a reader ("r1"), got "r2" '
        "(this file gives no [[flows]], so it comes from the default topology)")


# -- scripted events --------------------------------------------------------------------


@pytest.mark.parametrize(("event", "message"), [
    ('index = 1\naction = "explode"\n',
     'impairments.events[0].action: expected one of "drop", "duplicate", "corrupt", "delay", '
     '"hold", got "explode"'),
    ('index = 1\n',
     'impairments.events[0].action: expected one of "drop", "duplicate", "corrupt", "delay", '
     '"hold" (required)'),
    ('action = "drop"\n',
     "impairments.events[0].index: expected an integer >= 1 (required: the k-th matching "
     "frame)"),
    ('index = 0\naction = "drop"\n',
     "impairments.events[0].index: expected an integer >= 1, got 0"),
    ('index = 1\naction = "drop"\nflow = "nope"\n',
     'impairments.events[0].flow: expected the name of a flow ("f1", "f2"), got "nope"'),
    ('index = 1\naction = "drop"\nhold_segments = 2\n',
     'impairments.events[0].hold_segments: expected hold_segments only with action = "hold", '
     'got it with action = "drop"'),
    ('index = 1\naction = "delay"\n',
     'impairments.events[0].delay_ms: expected a number > 0 (required for action = '
     '"delay")'),
    ('index = 1\naction = "hold"\nhold_segments = 0\n',
     "impairments.events[0].hold_segments: expected an integer >= 1, got 0"),
    ('index = 1\naction = "drop"\nmatch = "some"\n',
     'impairments.events[0].match: expected one of "data", "any", got "some"'),
])
def test_event_errors(event: str, message: str) -> None:
    assert error_of("[[impairments.events]]\n" + event) == "configs/x.toml: " + message


def test_events_resolve_flow_names_to_four_tuples() -> None:
    s = parse_scenario(FULL_TOML, "full.toml")
    bulk = ("192.168.1.1", 50000, "192.168.1.2", 8080)
    assert s.four_tuple("bulk") == bulk
    wire = s.wire_impairments()
    assert wire.events == (
        ScriptedEvent(action="hold", nth=3, flow=bulk, hold_segments=2, max_hold_ns=50_000_000),
        ScriptedEvent(action="delay", nth=1, flow=("192.168.1.1", 50001, "192.168.1.2", 8080),
                      delay_ns=7_500_000),
        ScriptedEvent(action="corrupt", nth=9, flow=None, match="any"),
    )
    assert (wire.delay_ns, wire.jitter_ns, wire.reorder_gap_ns) == (2_000_000, 500_000,
                                                                    3_000_000)
    ack = s.ack_wire_impairments()
    # ACKs travel stack -> peer: the reverse 4-tuple, and every frame counts.
    assert ack.events == (ScriptedEvent(action="drop", nth=5, match="any",
                                        flow=("192.168.1.2", 8080, "192.168.1.1", 50000)),)
    assert (ack.loss, ack.delay_ns, ack.jitter_ns) == (0.02, 1_000_000, 200_000)


# -- unknown keys and TOML syntax ------------------------------------------------------------


@pytest.mark.parametrize(("text", "key"), [
    ("colour = 1\n", "colour"),
    ("[nic]\nqueus = 3\n", "nic.queus"),
    ("[sysctl]\ntcp_sak = 1\n", "sysctl.tcp_sak"),
    ("[[flows]]\nname = \"f1\"\nsize = 3\n", "flows[0].size"),
    ("[[readers]]\nthinkus = 3\n", "readers[0].thinkus"),
    ("[[impairments.events]]\naction = \"drop\"\nindex = 1\nnth = 2\n",
     "impairments.events[0].nth"),
    ("[ack_impairments]\nreorder = 0.1\n", "ack_impairments.reorder"),
    ("[log.extra]\nx = 1\n", "log.extra"),
])
def test_unknown_keys(text: str, key: str) -> None:
    message = error_of(text)
    assert message.startswith(f"configs/x.toml: {key}: unknown key")
    assert "expected one of:" in message


def test_unknown_key_suggests_the_near_one() -> None:
    assert error_of("[nic]\nqueus = 3\n") == (
        'configs/x.toml: nic.queus: unknown key (did you mean "queues"?); expected one of: '
        "cost_per_frame_us, device, gro, queues, ring_size, rss_key, rx_frames, rx_usecs")


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'seed = 1\n[nic]\nqueues = = 3\n')
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    err = info.value
    assert (err.line, err.column) == (3, 10)
    assert str(err).startswith(f"{path}:3:10: invalid TOML: Invalid value")
    assert "queues = = 3" in str(err)


def test_toml_error_at_end_of_document_names_last_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_scenario('seed = 1\nx = [1,\n', "configs/x.toml")
    assert info.value.line == 2
    assert str(info.value).startswith("configs/x.toml:2: invalid TOML:")


def test_duplicate_toml_key_is_a_syntax_error() -> None:
    assert error_of("seed = 1\nseed = 2\n").startswith("configs/x.toml:2:")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_scenario(tmp_path / "none.toml")
    assert str(info.value) == f"{tmp_path / 'none.toml'}: no such file"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.toml"
    path.write_bytes(b"seed = \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_scenario(path)


# -- minimal and full scenarios, round trip ----------------------------------------------


def test_minimal_scenario(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, 'profile = "modern"\n[impairments]\n'))
    assert s.profile == "modern" and s.kernel_profile is MODERN
    assert s.sysctl.tcp_rmem == MODERN.default_sysctls.tcp_rmem
    assert [f.name for f in s.flows] == ["f1", "f2"]  # from the default topology
    assert s.impairments.loss == 0.0 and s.impairments.events == ()  # given, so clean
    assert not s.wire_impairments().active
    assert Scenario.from_dict(s.to_dict()) == s


def test_full_scenario(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, FULL_TOML, "full.toml"))
    assert (s.profile, s.seed, s.duration) == ("modern", 7, 12.5)
    assert s.sysctl == Sysctls(tcp_low_latency=1, tcp_rmem=(4096, 65536, 1048576),
                               tcp_wmem=MODERN.default_sysctls.tcp_wmem, netdev_budget=600,
                               dev_weight=16, rmem_max=MODERN.default_sysctls.rmem_max,
                               netdev_budget_usecs=8000)
    assert s.nic.rss_key == bytes(range(40)) and s.nic.rx_frames == 8
    assert s.queue_to_cpu == (0, 1, 0, 1)
    assert s.stack.sk_rcvbuf(s.sysctl) == 131072 and s.stack.rcvbuf_locked
    assert s.peer.probe_style == "data" and not s.peer.sack
    assert [r.name for r in s.readers_of("bulk")] == ["slow", "helper"]
    slow = s.reader("slow")
    assert (slow.think_ns, slow.hold_lock_ns, slow.start_ns) == (100_000, 2_500_000, 5_000_000)
    assert slow.waitall and s.reader("fast").nonblocking
    assert s.flow("bulk").start_ns == 10_000_000
    assert s.log.level == "debug"
    assert s.duration_ns == 12_500_000_000


@pytest.mark.parametrize("text", ["", FULL_TOML, 'profile = "modern"\n' + FLOWS_AB])
def test_to_dict_round_trips(text: str) -> None:
    s = parse_scenario(text, "configs/x.toml")
    data = s.to_dict()
    again = json.loads(json.dumps(data))  # JSON-able, and nothing lost on the way
    assert again == data
    assert Scenario.from_dict(again) == s
    assert Scenario.from_dict(again).to_dict() == data
    assert "source" not in data
    # every sysctl is spelled out, in the file's own schema
    assert set(data["sysctl"]) == set(Sysctls.__dataclass_fields__)


def test_to_dict_leaves_out_keys_that_do_not_apply() -> None:
    events = parse_scenario(FULL_TOML, "f.toml").to_dict()["impairments"]["events"]
    assert events[0] == {"flow": "bulk", "index": 3, "action": "hold", "match": "data",
                         "hold_segments": 2, "max_hold_ms": 50.0}
    assert events[1] == {"flow": "small", "index": 1, "action": "delay", "match": "data",
                         "delay_ms": 7.5}
    assert events[2] == {"index": 9, "action": "corrupt", "match": "any"}


def test_from_dict_trusts_what_was_checked() -> None:
    # Actors rebuild the launcher's scenario without re-running the validator.
    data = parse_scenario(FULL_TOML, "f.toml").to_dict()
    data["nic"]["queues"] = 0  # the validator refuses this; from_dict does not check
    s = Scenario.from_dict(data, "topology")
    assert s.nic.queues == 0 and s.source == "topology"
    assert s.nic.rss_key == bytes(range(40)) and s.sysctl.tcp_rmem == (4096, 65536, 1048576)
    assert s.reader("slow").think_us == 100.0 and isinstance(s.flows, tuple)
    assert s.impairments.events[0].max_hold_ms == 50.0
    with pytest.raises(TypeError):
        Scenario.from_dict({"colour": 1})
    with pytest.raises(ConfigError) as info:
        scenario_from_data(data, "topology")
    assert str(info.value) == "topology: nic.queues: expected an integer >= 1, got 0"


def test_default_topology_is_package_data() -> None:
    text = default_topology_toml()
    assert text == (ROOT / "cli" / "default.toml").read_text()
    assert parse_scenario(text, DEFAULT_SOURCE) == default_scenario()


def test_actors_and_protocol_do_not_import_the_cli() -> None:
    # Dependencies point down: cli/ -> actors/ -> protocol/.
    code = (
        "import importlib, pkgutil, sys\n"
        "import actors, protocol\n"
        "for pkg in (actors, protocol):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cli'))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


# -- overrides -------------------------------------------------------------------------------


def test_overrides_replace_file_values(tmp_path: Path) -> None:
    path = write(tmp_path, 'profile = "legacy"\nseed = 3\n[sysctl]\ntcp_sack = 0\n')
    s = load_scenario(path, Overrides(profile="modern", seed=9, duration=5.0,
                                      sysctl=("tcp_low_latency=1",
                                              "net.ipv4.tcp_rmem=4096 65536 131072")))
    assert (s.profile, s.seed, s.duration) == ("modern", 9, 5.0)
    assert s.sysctl.tcp_sack == 0  # from the file
    assert s.sysctl.tcp_low_latency == 1
    assert s.sysctl.tcp_rmem == (4096, 65536, 131072)
    assert s.sysctl.tcp_wmem == MODERN.default_sysctls.tcp_wmem  # the overridden profile's


@pytest.mark.parametrize(("overrides", "message"), [
    (Overrides(profile="old"),
     'command line: profile: expected one of "legacy", "modern", got "old"'),
    (Overrides(seed=-1), "command line: seed: expected an integer >= 0, got -1"),
    (Overrides(duration=-2.0), "command line: duration: expected a number > 0, got -2.0"),
    (Overrides(sysctl=("tcp_sack",)), 'command line: sysctl: expected key=value, got "tcp_sack"'),
    (Overrides(sysctl=("tcp_sack=yes",)),
     'command line: sysctl.tcp_sack: expected an integer in [0, 1], got "yes"'),
    (Overrides(sysctl=("tcp_rmem=1,2",)),
     "command line: sysctl.tcp_rmem: expected an array of 3 integers >= 1 "
     "(min <= default <= max), got [1, 2]"),
])
def test_override_errors_name_the_command_line(overrides: Overrides, message: str) -> None:
    assert error_of("", overrides) == message


def test_unknown_sysctl_override() -> None:
    assert error_of("", Overrides(sysctl=("tcp_sak=1",))).startswith(
        'command line: sysctl.tcp_sak: unknown key (did you mean "tcp_sack"?)')


def test_parse_sysctl_assignment() -> None:
    assert parse_sysctl_assignment("dev_weight=32") == ("dev_weight", 32)
    assert parse_sysctl_assignment("tcp_rmem=1, 2, 3") == ("tcp_rmem", (1, 2, 3))
    assert parse_sysctl_assignment("sysctl.tcp_dsack=0") == ("tcp_dsack", 0)


# -- derived values ------------------------------------------------------------------------


def test_nic_device_kind() -> None:
    assert default_scenario().nic.device == "nic"
    s = parse_scenario('[nic]\ndevice = "tun"\n', "configs/x.toml")
    assert s.nic.device == "tun"
    assert Scenario.from_dict(s.to_dict()).nic.device == "tun"


def test_rss_key_in_ethtool_form() -> None:
    colons = ":".join(f"{b:02x}" for b in MICROSOFT_RSS_KEY)
    s = parse_scenario(f'[nic]\nrss_key = "{colons}"\n', "configs/x.toml")
    assert s.nic.rss_key == MICROSOFT_RSS_KEY == default_scenario().nic.rss_key


def test_so_rcvbuf_is_doubled_like_linux() -> None:
    sysctls = LEGACY.default_sysctls
    assert StackConfig().sk_rcvbuf(sysctls) == 87380 and not StackConfig().rcvbuf_locked
    assert StackConfig(rcvbuf=100_000).sk_rcvbuf(sysctls) == 200_000
    assert StackConfig(rcvbuf=1).sk_rcvbuf(sysctls) == SOCK_MIN_RCVBUF


def test_seed_for_is_stable_and_label_specific() -> None:
    s = default_scenario()
    assert s.seed_for("wire") == s.seed_for("wire")
    assert s.seed_for("wire") != s.seed_for("peer")
    other = load_scenario(None, Overrides(seed=2))
    assert other.seed_for("wire") != s.seed_for("wire")


# -- properties ----------------------------------------------------------------------------

_NUMERIC = [("readers", "think_us"), ("readers", "hold_lock_us"), ("readers", "copy_ns_per_byte"),
            ("flows", "start_ms")]


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.floats(min_value=0, max_value=1e6), st.integers(0, 10**6)),
       which=st.sampled_from(_NUMERIC))
def test_valid_numbers_round_trip(value: float, which: tuple[str, str]) -> None:
    section, key = which
    data = default_scenario().to_dict()
    data["duration"] = 1e4
    data[section][1][key] = value
    s = scenario_from_data(data, "h.toml")
    assert getattr(getattr(s, section)[1], key) == float(value)
    assert Scenario.from_dict(s.to_dict()) == s


@settings(max_examples=80, deadline=None)
@given(value=st.one_of(st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2),
                       st.floats(max_value=-1e-9), st.just(float("nan"))),
       which=st.sampled_from(_NUMERIC))
def test_invalid_numbers_name_their_key(value: object, which: tuple[str, str]) -> None:
    section, key = which
    data = default_scenario().to_dict()
    data[section][1][key] = value
    with pytest.raises(ConfigError) as info:
        scenario_from_data(data, "h.toml")
    assert info.value.key == f"{section}[1].{key}"
    assert str(info.value).startswith(f"h.toml: {section}[1].{key}: expected a number >= 0")


@settings(max_examples=60, deadline=None)
@given(key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12),
       section=st.sampled_from(["", "nic", "cpu", "stack", "peer", "log", "impairments"]))
def test_any_unknown_key_is_rejected(key: str, section: str) -> None:
    data = default_scenario().to_dict()
    table = data[section] if section else data
    if key in table:
        return
    table[key] = 1
    with pytest.raises(ConfigError) as info:
        scenario_from_data(data, "h.toml")
    assert info.value.key == (f"{section}.{key}" if section else key)
    assert info.value.detail.startswith("unknown key")


# -- the command line ---------------------------------------------------------------------

runner = CliRunner()


def test_validate_good_files(tmp_path: Path) -> None:
    a = write(tmp_path, 'description = "one"\n', "a.toml")
    b = write(tmp_path, FULL_TOML, "b.toml")
    result = runner.invoke(app, ["validate", str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"ok {a}: one", f"ok {b}: everything spelled out"]
    assert result.stderr == ""


def test_validate_bad_file_exits_2_with_message_on_stderr(tmp_path: Path) -> None:
    good = write(tmp_path, 'description = "fine"\n', "good.toml")
    bad = write(tmp_path, '[[readers]]\nname = "r1"\n[[readers]]\nthink_us = "slow"\n',
                "bad.toml")
    result = runner.invoke(app, ["validate", str(good), str(bad)])
    assert result.exit_code == 2
    assert result.stderr.strip() == \
        f'{bad}: readers[1].think_us: expected a number >= 0, got "slow"'
    assert result.stdout.strip() == f"ok {good}: fine"  # the good one is still checked


def test_validate_syntax_error_and_missing_file(tmp_path: Path) -> None:
    bad = write(tmp_path, "seed = \n", "syntax.toml")
    result = runner.invoke(app, ["validate", str(bad), str(tmp_path / "missing.toml")])
    assert result.exit_code == 2
    assert f"{bad}:1:" in result.stderr and "invalid TOML" in result.stderr
    assert f"{tmp_path / 'missing.toml'}: no such file" in result.stderr


def test_validate_show_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "", "empty.toml")
    result = runner.invoke(app, ["validate", "--show", "--profile", "modern",
                                 "-s", "tcp_low_latency=1", str(path)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout.split("\n", 1)[1])
    assert shown["profile"] == "modern" and shown["sysctl"]["tcp_low_latency"] == 1
    result = runner.invoke(app, ["validate", "--sysctl", "tcp_sack=7", str(path)])
    assert result.exit_code == 2
    assert "command line: sysctl.tcp_sack: expected an integer in [0, 1], got 7" in result.stderr


def test_validate_needs_a_file() -> None:
    assert runner.invoke(app, ["validate"]).exit_code == 2


def test_fail_config_prints_to_stderr_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as info:
        fail_config(ConfigError("c.toml", "nic.queues", "expected an integer >= 1, got 0"))
    assert info.value.exit_code == 2
    captured = capsys.readouterr()
    assert captured.err == "c.toml: nic.queues: expected an integer >= 1, got 0\n"
    assert captured.out == ""


def test_nic_gro_is_a_boolean() -> None:
    assert error_of("[nic]\ngro = 1\n") == "configs/x.toml: nic.gro: expected true or false, got 1"
