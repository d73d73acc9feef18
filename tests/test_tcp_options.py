"""The TCP option table and codec (protocol/tcp_options.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli.drill.packetdrill import PacketSpec, TcpOptionSpec, parse_script
from protocol.segment import Segment, TcpFlags, flags_text
from protocol.tcp_options import (
    NO_OPTIONS,
    OPTION_BY_KIND,
    OPTION_BY_NAME,
    TCP_OPTIONS,
    TcpOptions,
    encode_options,
    options_len,
    options_text,
    parse_options,
)

# One value per option as TcpOptions holds it, with its packetdrill text and wire bytes.
EXAMPLES: dict[str, tuple[Any, str, str]] = {
    "eol": (None, "eol", "00"),
    "nop": (None, "nop", "01"),
    "mss": (1460, "mss 1460", "020405b4"),
    "wscale": (7, "wscale 7", "030307"),
    "sackOK": (True, "sackOK", "0402"),
    "sack": (((1, 2), (3, 4)), "sack 1:2 3:4",
             "0512" "00000001" "00000002" "00000003" "00000004"),
    "TS": ((5, 6), "TS val 5 ecr 6", "080a" "00000005" "00000006"),
}


def test_table_covers_the_vocabulary_once() -> None:
    assert set(EXAMPLES) == set(OPTION_BY_NAME)
    assert len({o.kind for o in TCP_OPTIONS}) == len({o.name for o in TCP_OPTIONS}) \
        == len(TCP_OPTIONS)
    assert all(OPTION_BY_KIND[o.kind] is o for o in TCP_OPTIONS)
    assert {o.attr for o in TCP_OPTIONS if o.attr} == {
        "mss", "wscale", "sack_permitted", "sack_blocks", "timestamp"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_row_emits_parses_and_prints(name: str) -> None:
    value, text, wire = EXAMPLES[name]
    row = OPTION_BY_NAME[name]
    data = bytes.fromhex(wire)
    assert row.emit(value) == data and row.wire_len(value) == len(data)
    assert data[0] == row.kind
    assert row.text(value) == text
    spec = TcpOptionSpec.of(name, value)
    assert str(spec) == text and spec.length == len(data) and spec.option_value == value
    if row.attr:
        assert row.size_ok(len(data)) and not row.size_ok(len(data) + 1)
        assert row.parse(data, 0) == value
        opts = TcpOptions(**{row.attr: value}, layout=(name,))
        assert row.present_in(opts) and row.value_in(opts) == value
        assert not row.present_in(NO_OPTIONS)
        assert parse_options(encode_options(opts)) == TcpOptions(
            **{row.attr: value}, layout=(name,) + (("eol",) if len(data) % 4 else ()))


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_packetdrill_text_parses_back(name: str) -> None:
    value, text, wire = EXAMPLES[name]
    pad = ",nop" * (-len(bytes.fromhex(wire)) % 4)
    script = parse_script(f"+0 > . 1:1(0) ack 1 <{text}{pad}>\n")
    spec = script.events[0].action
    assert isinstance(spec, PacketSpec) and spec.options is not None
    assert spec.options[0] == TcpOptionSpec.of(name, value)
    assert str(spec).endswith(f"<{text}{pad}>")


u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def options(draw: st.DrawFn) -> TcpOptions:
    opts = TcpOptions(mss=draw(st.none() | st.integers(0, 0xFFFF)),
                      wscale=draw(st.none() | st.integers(0, 14)),
                      sack_permitted=draw(st.booleans()),
                      sack_blocks=tuple(draw(st.lists(st.tuples(u32, u32), max_size=2))),
                      timestamp=draw(st.none() | st.tuples(u32, u32)))
    if draw(st.booleans()):
        names = [o.name for o in TCP_OPTIONS if o.present_in(opts)]
        layout = draw(st.permutations(names)) + draw(st.lists(st.just("nop"), max_size=3))
        opts = TcpOptions(opts.mss, opts.wscale, opts.sack_permitted, opts.sack_blocks,
                          opts.timestamp, tuple(layout))
    return opts


@given(options())
def test_options_len_is_the_encoded_length(opts: TcpOptions) -> None:
    try:
        data = encode_options(opts)
    except ValueError:
        return  # more than 40 bytes: no segment can carry it
    assert options_len(opts) == len(data)
    parsed = parse_options(data)
    assert parsed.wire_len == len(data) == options_len(parsed)


def test_options_text_follows_wire_order_without_nops() -> None:
    syn = TcpOptions(mss=1460, wscale=7, sack_permitted=True, timestamp=(1, 0))
    assert options_text(syn) == "mss 1460,sackOK,TS val 1 ecr 0,wscale 7"
    assert options_text(TcpOptions(wscale=2, mss=9, layout=("wscale", "nop", "mss"))) \
        == "wscale 2,mss 9"
    assert options_text(NO_OPTIONS) == ""
    seg = Segment("10.0.0.2", 40000, "10.0.0.1", 5001, 7, 9, TcpFlags.ACK, 100,
                  TcpOptions(timestamp=(3, 4), sack_blocks=((10, 20),)), b"xy")
    assert seg.describe() == ("10.0.0.2:40000 > 10.0.0.1:5001 . 7:9(2) ack 9 win 100 "
                              "<TS val 3 ecr 4,sack 10:20>")


def test_flags_text() -> None:
    assert flags_text(TcpFlags.SYN | TcpFlags.ACK) == "S."
    assert flags_text(TcpFlags.FIN | TcpFlags.PSH | TcpFlags.ACK) == "FP."
    assert flags_text(0) == "none"
    assert flags_text(0xFF) == "SFRPUEW."
