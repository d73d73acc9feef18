"""IPv4 + TCP encoding and decoding (protocol/wire.py)."""

from __future__ import annotations

import socket
import struct
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol.segment import NO_OPTIONS, Segment, TcpFlags, TcpOptions
from protocol.wire import (
    IP_DF,
    IP_MF,
    Ipv4BadTotalLength,
    Ipv4BadVersionOrIhl,
    Ipv4ChecksumError,
    Ipv4Fragment,
    Ipv4HeaderError,
    Ipv4HeaderTruncated,
    Ipv4TooShort,
    Ipv4Truncated,
    MalformedPacket,
    NotTcp,
    TcpBadDataOffset,
    TcpChecksumError,
    TcpHeaderTruncated,
    TcpTooShort,
    decode,
    decode_ipv4,
    decode_tcp,
    default_layout,
    encode,
    encode_options,
    encode_with,
    internet_checksum,
    parse_options,
    tcp_checksum,
    tcp_checksum_ok,
)

# --------------------------------------------------------------------------- helpers


def rfc1071(data: bytes) -> int:
    """The Internet checksum, the slow obvious way (RFC 1071 section 4.1)."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(src: str, dst: str, tcp_len: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, tcp_len)


def build_frame(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
                window: int, options: bytes = b"", payload: bytes = b"", *, ttl: int = 64,
                tos: int = 0, ip_id: int = 0, urg_ptr: int = 0) -> bytes:
    """An IPv4/TCP frame assembled field by field with struct."""
    doff = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, window, 0,
                      urg_ptr) + options + payload
    csum = rfc1071(pseudo_header(src, dst, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(tcp), ip_id, 0x4000, ttl, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", rfc1071(ip)) + ip[12:]
    return ip + tcp


def fix_tcp_checksum(frame: bytes) -> bytes:
    ihl = (frame[0] & 0xF) * 4
    tcp = frame[ihl:]
    src = socket.inet_ntoa(frame[12:16])
    dst = socket.inet_ntoa(frame[16:20])
    zeroed = tcp[:16] + b"\x00\x00" + tcp[18:]
    csum = rfc1071(pseudo_header(src, dst, len(tcp)) + zeroed)
    return frame[:ihl] + tcp[:16] + struct.pack("!H", csum) + tcp[18:]


def flip_bit(frame: bytes, bit: int) -> bytes:
    out = bytearray(frame)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


SYN = Segment("10.0.0.2", 40000, "10.0.0.1", 5001, seq=1000, ack=0, flags=TcpFlags.SYN,
              window=64240,
              options=TcpOptions(mss=1460, wscale=7, sack_permitted=True, timestamp=(100, 0)))
DATA = Segment("10.0.0.2", 40000, "10.0.0.1", 5001, seq=1001, ack=5001,
               flags=TcpFlags.ACK | TcpFlags.PSH, window=502,
               options=TcpOptions(timestamp=(200, 150)), payload=b"hello world")

# --------------------------------------------------------------------------- known bytes


def test_syn_matches_hand_built_bytes() -> None:
    opts = (struct.pack("!BBH", 2, 4, 1460) + bytes((4, 2, 8, 10)) + struct.pack("!II", 100, 0)
            + bytes((1, 3, 3, 7)))
    expected = build_frame("10.0.0.2", "10.0.0.1", 40000, 5001, 1000, 0, 0x02, 64240, opts)
    assert len(opts) == 20
    assert encode(SYN) == expected


def test_data_segment_matches_hand_built_bytes() -> None:
    opts = bytes((1, 1, 8, 10)) + struct.pack("!II", 200, 150)
    expected = build_frame("10.0.0.2", "10.0.0.1", 40000, 5001, 1001, 5001, 0x18, 502, opts,
                           b"hello world")
    assert encode(DATA) == expected


def test_syn_literal_bytes() -> None:
    # Independently computed: IP checksum 0x26ba, TCP checksum 0x53fa.
    expected = bytes.fromhex(
        "4500003c00004000400626ba0a0000020a000001"
        "9c40138900003039000000" "00a002ffff53fa0000"
        "020405b40402080a00000001000000000103" "0307"
    )
    seg = Segment("10.0.0.2", 40000, "10.0.0.1", 5001, seq=12345, flags=TcpFlags.SYN,
                  window=65535,
                  options=TcpOptions(mss=1460, wscale=7, sack_permitted=True, timestamp=(1, 0)))
    assert encode(seg) == expected
    assert expected[10:12] == b"\x26\xba" and rfc1071(expected[:20]) == 0


# Frames captured from Linux 6.18 on loopback in a fresh network namespace
# (127.0.0.1:40000 connecting to 127.0.0.1:5001 and sending 13 bytes). Loopback
# leaves the TCP checksum as the pseudo-header partial sum (CHECKSUM_PARTIAL);
# everything else, the IP checksum included, is as Linux wrote it.
LINUX_FRAMES = {
    "syn": "4500003cb68b40004006862e7f0000017f0000019c4013899baecffa00000000a002ffd7fe300000"
           "0204ffd70402080a77911e65000000000103030a",
    "synack": "4500003c0000400040063cba7f0000017f00000113899c40d9a890229baecffba012ffcbfe300000"
              "0204ffd70402080aaf878e6277911e650103030a",
    "ack": "45000034b68c4000400686357f0000017f0000019c4013899baecffbd9a8902380100040fe280000"
           "0101080a77911e66af878e62",
    "data": "45000041b68d4000400686277f0000017f0000019c4013899baecffbd9a8902380180040fe350000"
            "0101080a77911e66af878e6268656c6c6f2c20727870617468",
    "server_ack": "45000034fa994000400642287f0000017f00000113899c40d9a890239baed00880100040fe28"
                  "00000101080aaf878e6277911e66",
}


@pytest.mark.parametrize("name", sorted(LINUX_FRAMES))
def test_linux_frames_round_trip(name: str) -> None:
    raw = bytes.fromhex(LINUX_FRAMES[name])
    partial = struct.unpack_from("!H", raw, 36)[0]
    # The partial value is the folded pseudo-header sum: checks our pseudo-header.
    assert partial == ~rfc1071(pseudo_header("127.0.0.1", "127.0.0.1", len(raw) - 20)) & 0xFFFF
    frame = fix_tcp_checksum(raw)
    seg = decode(frame)
    assert encode(seg) == frame
    # Linux's own layout is what we produce by default for the same options.
    assert encode(seg.with_(options=replace(seg.options, layout=()))) == frame
    assert seg.options.layout == default_layout(seg.options)


def test_linux_syn_fields() -> None:
    seg = decode(fix_tcp_checksum(bytes.fromhex(LINUX_FRAMES["syn"])))
    assert (seg.src, seg.sport, seg.dst, seg.dport) == ("127.0.0.1", 40000, "127.0.0.1", 5001)
    assert seg.seq == 0x9BAECFFA and seg.flags == TcpFlags.SYN and seg.window == 65495
    assert seg.options == TcpOptions(mss=65495, wscale=10, sack_permitted=True,
                                     timestamp=(0x77911E65, 0),
                                     layout=("mss", "sackOK", "TS", "nop", "wscale"))
    assert (seg.ttl, seg.tos, seg.ip_id) == (64, 0, 0xB68B)


def test_linux_data_fields() -> None:
    seg = decode(fix_tcp_checksum(bytes.fromhex(LINUX_FRAMES["data"])))
    assert seg.payload == b"hello, rxpath"
    assert seg.flags == TcpFlags.PSH | TcpFlags.ACK
    assert seg.ack == 0xD9A89023 and seg.window == 64
    assert seg.options == TcpOptions(timestamp=(0x77911E66, 0xAF878E62),
                                     layout=("nop", "nop", "TS"))


def test_linux_tcp_checksum_partial_is_rejected_as_is() -> None:
    # Unfixed, the loopback frame's TCP checksum is wrong on a real wire.
    pkt = decode_ipv4(bytes.fromhex(LINUX_FRAMES["data"]))
    assert not tcp_checksum_ok(pkt)
    with pytest.raises(TcpChecksumError):
        decode_tcp(pkt)
    assert decode_tcp(pkt, verify_checksum=False).payload == b"hello, rxpath"


def test_published_ipv4_header_vector() -> None:
    # The well-known example header (checksum 0xb861), a UDP datagram of 0x73 bytes.
    header = bytes.fromhex("45000073000040004011b861c0a80001c0a800c7")
    pkt = decode_ipv4(header + bytes(0x73 - 20) + b"\xee\xee")  # plus link padding
    assert (pkt.src, pkt.dst, pkt.protocol, pkt.ttl) == ("192.168.0.1", "192.168.0.199", 17, 64)
    assert pkt.df and not pkt.mf and pkt.frag_offset == 0 and not pkt.is_fragment
    assert pkt.checksum == 0xB861 and len(pkt.l4) == 0x73 - 20
    with pytest.raises(NotTcp) as err:
        decode_tcp(pkt)
    assert err.value.counters == ("IpInUnknownProtos",)
    assert internet_checksum(header[:10] + b"\x00\x00" + header[12:]) == 0xB861


def test_tcp_checksum_helper_matches_rfc1071() -> None:
    frame = encode(DATA)
    tcp = frame[20:]
    assert tcp_checksum(DATA.src, DATA.dst, tcp) == struct.unpack_from("!H", tcp, 16)[0]
    assert tcp_checksum(DATA.src, DATA.dst, tcp) == rfc1071(
        pseudo_header(DATA.src, DATA.dst, len(tcp)) + tcp[:16] + b"\x00\x00" + tcp[18:])


def test_checksum_zero_result_is_written_as_zero() -> None:
    # Find a payload whose sum makes the TCP checksum come out as 0x0000 (Linux's
    # csum_fold never writes 0xFFFF for TCP): pick the last two bytes to force it.
    base = DATA.with_(payload=b"xx\x00\x00", options=NO_OPTIONS)
    csum = struct.unpack_from("!H", encode(base), 36)[0]
    seg = base.with_(payload=b"xx" + struct.pack("!H", csum))
    frame = encode(seg)
    assert frame[36:38] == b"\x00\x00"
    assert rfc1071(pseudo_header(seg.src, seg.dst, len(frame) - 20)
                   + frame[20:36] + b"\x00\x00" + frame[38:]) == 0
    assert decode(frame) == seg


# --------------------------------------------------------------------------- options


def opt_bytes(opts: TcpOptions) -> bytes:
    return encode_options(opts)


def test_default_layout_syn_with_timestamps() -> None:
    opts = TcpOptions(mss=1460, wscale=7, sack_permitted=True, timestamp=(5, 0))
    assert default_layout(opts) == ("mss", "sackOK", "TS", "nop", "wscale")
    assert opt_bytes(opts) == bytes.fromhex("020405b4" "0402080a0000000500000000" "01030307")


def test_default_layout_syn_without_timestamps() -> None:
    opts = TcpOptions(mss=1460, wscale=7, sack_permitted=True)
    assert default_layout(opts) == ("mss", "nop", "nop", "sackOK", "nop", "wscale")
    assert opt_bytes(opts) == bytes.fromhex("020405b4" "01010402" "01030307")


def test_default_layout_timestamps_without_sack_permitted() -> None:
    opts = TcpOptions(mss=536, timestamp=(1, 2))
    assert default_layout(opts) == ("mss", "nop", "nop", "TS")
    assert opt_bytes(opts) == bytes.fromhex("02040218" "0101080a0000000100000002")


def test_default_layout_established_with_sack_blocks() -> None:
    opts = TcpOptions(timestamp=(7, 8), sack_blocks=((100, 200), (300, 400)))
    assert default_layout(opts) == ("nop", "nop", "TS", "nop", "nop", "sack")
    assert opt_bytes(opts) == (bytes.fromhex("0101080a0000000700000008" "01010512")
                               + struct.pack("!IIII", 100, 200, 300, 400))


def test_default_layout_sack_without_timestamps_allows_four_blocks() -> None:
    blocks = ((1, 2), (3, 4), (5, 6), (7, 8))
    data = opt_bytes(TcpOptions(sack_blocks=blocks))
    assert len(data) == 36
    assert data[:4] == bytes((1, 1, 5, 34))


def test_options_beyond_40_bytes_raise() -> None:
    with pytest.raises(ValueError, match="40"):
        encode_options(TcpOptions(timestamp=(1, 1), sack_blocks=((1, 2),) * 4))
    with pytest.raises(ValueError):
        encode(DATA.with_(options=TcpOptions(layout=("nop",) * 41)))


def test_explicit_layout_is_honoured_and_padded_with_eol() -> None:
    opts = TcpOptions(mss=1000, wscale=2, layout=("mss", "wscale"))
    data = encode_options(opts)
    assert data == bytes.fromhex("020403e8" "030302" "00")
    assert parse_options(data).layout == ("mss", "wscale", "eol")


def test_explicit_layout_packetdrill_style() -> None:
    opts = TcpOptions(mss=1460, sack_permitted=True, timestamp=(100, 0), wscale=7,
                      layout=("mss", "sackOK", "TS", "nop", "wscale"))
    assert encode_options(opts) == encode_options(replace(opts, layout=()))
    opts2 = replace(opts, layout=("mss", "nop", "nop", "sackOK", "nop", "wscale", "nop", "nop",
                                  "TS"))
    assert encode_options(opts2) == bytes.fromhex("020405b4" "01010402" "01030307"
                                                  "0101080a0000006400000000")


def test_explicit_layout_must_match_options() -> None:
    with pytest.raises(ValueError, match="wscale"):
        encode_options(TcpOptions(mss=1460, wscale=7, layout=("mss",)))
    with pytest.raises(ValueError, match="TS"):
        encode_options(TcpOptions(mss=1460, layout=("mss", "TS")))
    with pytest.raises(ValueError, match="unknown"):
        encode_options(TcpOptions(layout=("md5",)))


def test_option_values_out_of_range_raise_value_error() -> None:
    with pytest.raises(ValueError):
        encode_options(TcpOptions(mss=70000))
    with pytest.raises(ValueError):
        encode_options(TcpOptions(timestamp=(2**32, 0)))


def test_parse_eol_ends_parsing() -> None:
    data = bytes.fromhex("020405b4" "00" "030307")  # wscale after EOL is ignored
    opts = parse_options(data)
    assert opts.mss == 1460 and opts.wscale is None
    assert opts.layout == ("mss", "eol")


def test_parse_silly_length_stops_silently() -> None:
    assert parse_options(bytes.fromhex("01" "0801" "020405b4")) == TcpOptions(layout=("nop",))
    assert parse_options(bytes.fromhex("0800" "020405b4")).mss is None


def test_parse_partial_option_stops() -> None:
    opts = parse_options(bytes.fromhex("020405b4" "080a000000"))  # TS cut short
    assert opts.mss == 1460 and opts.timestamp is None and opts.layout == ("mss",)
    assert parse_options(bytes.fromhex("01010102")) == TcpOptions(layout=("nop",) * 3)


def test_parse_skips_unknown_and_wrong_length_known_kinds() -> None:
    # Kind 30 (MPTCP) skipped by its length; an MSS of length 3 skipped; then
    # sackOK and a wscale.
    data = bytes.fromhex("1e04abcd" "0203ff" "04020303" "08")
    opts = parse_options(data)
    assert opts.mss is None and opts.sack_permitted and opts.wscale == 8
    assert opts.layout == ("sackOK", "wscale")


def test_parse_sack_blocks_and_bad_sack_length() -> None:
    good = bytes.fromhex("0101050a") + struct.pack("!II", 10, 20)
    assert parse_options(good).sack_blocks == ((10, 20),)
    bad = bytes.fromhex("0101050b") + struct.pack("!II", 10, 20) + b"\x01"
    assert parse_options(bad).sack_blocks == ()


def test_parse_repeated_option_last_wins() -> None:
    data = bytes.fromhex("02040100" "02040200")
    opts = parse_options(data)
    assert opts.mss == 0x200 and opts.layout == ("mss", "mss")
    # Only the surviving value can be written back.
    assert encode_options(opts) == bytes.fromhex("02040200" "02040200")


def test_parse_fast_path_equals_slow_path() -> None:
    data = bytes.fromhex("0101080a0000000100000002")
    assert parse_options(data) == TcpOptions(timestamp=(1, 2), layout=("nop", "nop", "TS"))
    assert parse_options(data + b"\x01\x01\x01\x01").timestamp == (1, 2)


# --------------------------------------------------------------------------- IPv4 errors


def test_ipv4_too_short() -> None:
    with pytest.raises(Ipv4TooShort) as err:
        decode_ipv4(encode(SYN)[:19])
    assert err.value.counters == ("IpInHdrErrors",) and err.value.drop_reason == "IP_INHDR"
    assert "19" in str(err.value)


@pytest.mark.parametrize(("version", "ihl"), [(6, 5), (4, 4), (4, 0), (0, 5)])
def test_ipv4_bad_version_or_ihl(version: int, ihl: int) -> None:
    with pytest.raises(Ipv4BadVersionOrIhl) as err:
        decode_ipv4(encode_with(SYN, version=version, ihl=ihl))
    assert err.value.counters == ("IpInHdrErrors",)


def test_ipv4_header_longer_than_frame() -> None:
    frame = encode_with(SYN, ihl=15)[:40]
    with pytest.raises(Ipv4HeaderTruncated) as err:
        decode_ipv4(frame)
    assert err.value.counters == ("IpInHdrErrors",)


def test_ipv4_bad_checksum() -> None:
    with pytest.raises(Ipv4ChecksumError) as err:
        decode_ipv4(encode_with(SYN, ip_checksum=0x1234))
    assert err.value.counters == ("IpExtInCsumErrors", "IpInHdrErrors")
    assert err.value.drop_reason == "IP_CSUM"
    assert isinstance(err.value, Ipv4HeaderError)


def test_ipv4_truncated() -> None:
    frame = encode(DATA)
    with pytest.raises(Ipv4Truncated) as err:
        decode_ipv4(frame[:-1])
    assert err.value.counters == ("IpExtInTruncatedPkts",)
    assert err.value.drop_reason == "PKT_TOO_SMALL"


def test_ipv4_total_length_below_header() -> None:
    with pytest.raises(Ipv4BadTotalLength) as err:
        decode_ipv4(encode_with(SYN, total_length=19))
    assert err.value.counters == ("IpInHdrErrors",)


def test_ipv4_checksum_is_checked_before_lengths() -> None:
    # ip_rcv_core verifies the checksum before it looks at tot_len.
    with pytest.raises(Ipv4ChecksumError):
        decode_ipv4(encode_with(SYN, total_length=19, ip_checksum=0))
    with pytest.raises(Ipv4ChecksumError):
        decode_ipv4(encode_with(SYN, total_length=1000, ip_checksum=0))


def test_ipv4_version_is_checked_before_checksum() -> None:
    with pytest.raises(Ipv4BadVersionOrIhl):
        decode_ipv4(encode_with(SYN, version=6, ip_checksum=0))


def test_ipv4_trailing_padding_is_trimmed() -> None:
    frame = encode(SYN.with_(options=NO_OPTIONS))  # 40 bytes; Ethernet pads to 46
    pkt = decode_ipv4(frame + bytes(6))
    assert len(pkt.l4) == 20 and pkt.total_length == 40
    assert decode(frame + bytes(6)) == SYN.with_(options=NO_OPTIONS)


def test_ipv4_options_are_kept_in_header() -> None:
    frame = encode_with(DATA, ip_options=b"\x01\x01\x01\x00")
    pkt = decode_ipv4(frame)
    assert pkt.ihl == 6 and pkt.options == b"\x01\x01\x01\x00"
    assert decode_tcp(pkt) == DATA.with_(options=replace(DATA.options, layout=("nop", "nop", "TS")))


def test_accepts_bytearray_and_memoryview() -> None:
    frame = encode(DATA)
    assert decode(bytearray(frame)) == decode(frame)
    assert decode(memoryview(frame)) == decode(frame)


# --------------------------------------------------------------------------- TCP errors


def test_tcp_too_short() -> None:
    frame = encode_with(DATA.with_(options=NO_OPTIONS, payload=b""), total_length=20 + 19)
    with pytest.raises(TcpTooShort) as err:
        decode(frame)
    assert err.value.counters == ()


@pytest.mark.parametrize("doff", [0, 4])
def test_tcp_data_offset_below_five(doff: int) -> None:
    with pytest.raises(TcpBadDataOffset) as err:
        decode(encode_with(DATA, doff=doff))
    assert err.value.counters == ("TcpInErrs",)


def test_tcp_data_offset_beyond_segment() -> None:
    seg = DATA.with_(options=NO_OPTIONS, payload=b"")
    with pytest.raises(TcpHeaderTruncated) as err:
        decode(encode_with(seg, doff=6))
    # tcp_v4_rcv: pskb_may_pull(skb, doff * 4) fails -> discard_it, no counter.
    assert err.value.counters == ()


def test_tcp_bad_checksum() -> None:
    frame = encode_with(DATA, tcp_checksum=0xBEEF)
    with pytest.raises(TcpChecksumError) as err:
        decode(frame)
    assert err.value.counters == ("TcpInCsumErrors", "TcpInErrs")
    assert err.value.drop_reason == "TCP_CSUM"
    assert decode(frame, verify_checksum=False) == decode(encode(DATA))


def test_tcp_structure_is_checked_before_checksum() -> None:
    with pytest.raises(TcpBadDataOffset):
        decode(encode_with(DATA, doff=3, tcp_checksum=0))


def test_fragments_are_rejected() -> None:
    for frag_off in (IP_MF, 0x0001, IP_DF | 0x0010):
        with pytest.raises(Ipv4Fragment) as err:
            decode(encode_with(DATA, frag_off=frag_off))
        assert err.value.drop_reason == "FRAG_REASM_TIMEOUT"


def test_reserved_bits_and_flags_beyond_eight_are_ignored() -> None:
    frame = encode_with(DATA, tcp_reserved=0xF)
    assert decode(frame).flags == DATA.flags


def test_all_errors_are_malformed_packet_and_value_error() -> None:
    for cls in (Ipv4TooShort, Ipv4BadVersionOrIhl, Ipv4HeaderTruncated, Ipv4ChecksumError,
                Ipv4Truncated, Ipv4BadTotalLength, Ipv4Fragment, NotTcp, TcpTooShort,
                TcpBadDataOffset, TcpHeaderTruncated, TcpChecksumError):
        assert issubclass(cls, MalformedPacket) and issubclass(cls, ValueError)


def test_encode_rejects_bad_fields() -> None:
    with pytest.raises(ValueError):
        encode(DATA.with_(src="10.0.0"))
    with pytest.raises(ValueError):
        encode(DATA.with_(seq=2**32))
    with pytest.raises(ValueError):
        encode(DATA.with_(payload=bytes(65535)))
    with pytest.raises(ValueError):
        encode_with(DATA, ip_options=b"\x01")


# --------------------------------------------------------------------------- properties

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
addresses = st.tuples(u8, u8, u8, u8).map(lambda t: ".".join(map(str, t)))


def expected_default_layout(opts: TcpOptions) -> tuple[str, ...]:
    """tcp_options_write()'s order, restated for the test."""
    out: tuple[str, ...] = ()
    if opts.mss is not None:
        out += ("mss",)
    if opts.timestamp is not None:
        out += ("sackOK", "TS") if opts.sack_permitted else ("nop", "nop", "TS")
    elif opts.sack_permitted:
        out += ("nop", "nop", "sackOK")
    if opts.wscale is not None:
        out += ("nop", "wscale")
    if opts.sack_blocks:
        out += ("nop", "nop", "sack")
    return out


@st.composite
def default_options(draw: st.DrawFn) -> TcpOptions:
    mss = draw(st.none() | u16)
    wscale = draw(st.none() | u8)
    sack_ok = draw(st.booleans())
    ts = draw(st.none() | st.tuples(u32, u32))
    used = ((4 if mss is not None else 0) + (12 if ts is not None else 0)
            + (4 if sack_ok and ts is None else 0) + (4 if wscale is not None else 0))
    room = max(0, (40 - used - 4) // 8)
    blocks = tuple(draw(st.lists(st.tuples(u32, u32), max_size=room)))
    return TcpOptions(mss=mss, wscale=wscale, sack_permitted=sack_ok, sack_blocks=blocks,
                      timestamp=ts)


OPTION_SIZE = {"mss": 4, "wscale": 3, "sackOK": 2, "TS": 10, "nop": 1, "eol": 1}


@st.composite
def explicit_options(draw: st.DrawFn) -> TcpOptions:
    opts = draw(default_options())
    names = [name for name, present in (
        ("mss", opts.mss is not None), ("wscale", opts.wscale is not None),
        ("sackOK", opts.sack_permitted), ("TS", opts.timestamp is not None),
        ("sack", bool(opts.sack_blocks))) if present]
    names = draw(st.permutations(names))
    layout: list[str] = []
    for name in names:
        layout += ["nop"] * draw(st.integers(0, 2))
        layout.append(name)
    layout += ["nop"] * draw(st.integers(0, 3))
    if draw(st.booleans()):
        layout.append("eol")
    size = sum(OPTION_SIZE.get(n, 2 + 8 * len(opts.sack_blocks)) for n in layout)
    assume(size <= 40)
    return replace(opts, layout=tuple(layout))


@st.composite
def segments(draw: st.DrawFn, options: st.SearchStrategy[TcpOptions]) -> Segment:
    return Segment(
        src=draw(addresses), sport=draw(u16), dst=draw(addresses), dport=draw(u16),
        seq=draw(u32), ack=draw(u32), flags=draw(u8), window=draw(u16),
        options=draw(options), payload=draw(st.binary(max_size=1500)), urg_ptr=draw(u16),
        ttl=draw(u8), tos=draw(u8), ip_id=draw(u16),
    )


def assert_checksums_valid(seg: Segment, frame: bytes) -> None:
    assert rfc1071(frame[:20]) == 0
    tcp = frame[20:]
    assert rfc1071(pseudo_header(seg.src, seg.dst, len(tcp)) + tcp) == 0


@settings(max_examples=300)
@given(segments(default_options()))
def test_round_trip_default_layout(seg: Segment) -> None:
    frame = encode(seg)
    assert_checksums_valid(seg, frame)
    assert struct.unpack_from("!H", frame, 2)[0] == len(frame)
    got = decode(frame)
    layout = expected_default_layout(seg.options)
    assert got == seg.with_(options=replace(seg.options, layout=layout))
    assert got.options.layout == default_layout(seg.options)
    assert encode(got) == frame


@settings(max_examples=300)
@given(segments(explicit_options()))
def test_round_trip_explicit_layout(seg: Segment) -> None:
    frame = encode(seg)
    assert_checksums_valid(seg, frame)
    doff = frame[32] >> 4
    layout = seg.options.layout
    size = sum(OPTION_SIZE.get(n, 2 + 8 * len(seg.options.sack_blocks)) for n in layout)
    assert doff * 4 == 20 + (size + 3) // 4 * 4
    got = decode(frame)
    if size % 4 and layout[-1:] != ("eol",):
        layout += ("eol",)
    assert got == seg.with_(options=replace(seg.options, layout=layout))
    assert encode(got) == frame


@settings(max_examples=200)
@given(segments(default_options()), st.data())
def test_any_single_bit_flip_is_rejected(seg: Segment, data: st.DataObject) -> None:
    frame = encode(seg)
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    with pytest.raises(MalformedPacket):
        decode(flip_bit(frame, bit))


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_decode_never_fails_uncontrolled(frame: bytes) -> None:
    try:
        seg = decode(frame)
    except MalformedPacket as err:
        assert str(err)
        assert all(isinstance(c, str) for c in err.counters)
    else:
        assert isinstance(seg, Segment)


@settings(max_examples=200)
@given(segments(default_options()), st.binary(min_size=1, max_size=64))
def test_garbage_options_parse_without_error(seg: Segment, junk: bytes) -> None:
    junk = junk[:40]
    junk += bytes(-len(junk) % 4)
    frame = bytearray(encode(seg.with_(options=NO_OPTIONS, payload=b"")))
    frame[32] = (5 + len(junk) // 4) << 4 | (frame[32] & 0xF)
    frame[2:4] = struct.pack("!H", len(frame) + len(junk))
    frame += junk
    frame[10:12] = b"\x00\x00"
    frame[10:12] = struct.pack("!H", rfc1071(bytes(frame[:20])))
    got = decode(fix_tcp_checksum(bytes(frame)))
    assert set(got.options.layout) <= {"mss", "nop", "wscale", "sackOK", "sack", "TS", "eol"}


def fix_ip_checksum(frame: bytes) -> bytes:
    ihl = (frame[0] & 0xF) * 4
    if len(frame) < ihl or ihl < 20:
        return frame
    header = frame[:10] + b"\x00\x00" + frame[12:ihl]
    return header[:10] + struct.pack("!H", rfc1071(header)) + frame[12:]


@settings(max_examples=400)
@given(segments(default_options()), st.lists(st.tuples(st.integers(0, 100), u8), max_size=6),
       st.booleans(), st.booleans())
def test_mutated_frames_decode_or_raise_malformed(
        seg: Segment, edits: list[tuple[int, int]], fix_ip: bool, fix_tcp: bool) -> None:
    frame = bytearray(encode(seg))
    for pos, value in edits:
        if pos < len(frame):
            frame[pos] = value
    mutated = bytes(frame)
    if fix_ip:
        mutated = fix_ip_checksum(mutated)
    if fix_tcp and len(mutated) >= 40:
        mutated = fix_tcp_checksum(mutated)
    try:
        got = decode(mutated)
    except MalformedPacket as err:
        assert str(err)
    else:
        # Whatever decodes re-encodes to a frame that decodes to the same segment, up to
        # the EOL padding that re-encoding adds after a layout cut short by bad options.
        again = decode(encode(got))
        strip = tuple(n for n in got.options.layout if n != "eol")
        assert tuple(n for n in again.options.layout if n != "eol") == strip
        assert again.with_(options=got.options) == got


# --------------------------------------------------------------------------- fast checksum

# Data the word-sum shortcut could get wrong: odd lengths (the pad byte), all zero (a sum
# of 0, checksum 0xFFFF) and all 0xFF (a sum of 0xFFFF, checksum 0).
checksum_data = st.one_of(
    st.binary(max_size=1600),
    st.integers(0, 80).map(bytes),
    st.integers(0, 80).map(lambda n: b"\xff" * n),
    st.binary(max_size=40).map(lambda b: b + b"\xff" * 40),
)


@settings(max_examples=500)
@given(checksum_data)
def test_fast_checksum_matches_rfc1071(data: bytes) -> None:
    assert internet_checksum(data) == rfc1071(data)


def test_checksum_edge_values() -> None:
    assert internet_checksum(b"") == rfc1071(b"") == 0xFFFF
    assert internet_checksum(bytes(7)) == 0xFFFF
    assert internet_checksum(b"\xff\xff") == 0 and internet_checksum(b"\xff") == 0x00FF
    assert internet_checksum(b"\xff" * 5) == rfc1071(b"\xff" * 5) == 0x00FF


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=600), st.data())
def test_fast_checksum_detects_every_single_bit_flip(data: bytes, draw: st.DataObject) -> None:
    block = data + bytes(len(data) & 1)
    block += struct.pack("!H", internet_checksum(block))
    assert internet_checksum(block) == 0 and rfc1071(block) == 0
    bit = draw.draw(st.integers(0, len(block) * 8 - 1))
    flipped = flip_bit(block, bit)
    assert internet_checksum(flipped) != 0
    assert internet_checksum(flipped) == rfc1071(flipped)


@settings(max_examples=100)
@given(segments(default_options()), st.data())
def test_tcp_checksum_ok_agrees_with_reference(seg: Segment, data: st.DataObject) -> None:
    frame = encode(seg)
    if data.draw(st.booleans()):  # damage one bit of the TCP segment, or leave it intact
        frame = flip_bit(frame, data.draw(st.integers(20 * 8, len(frame) * 8 - 1)))
    pkt = decode_ipv4(frame)
    tcp = frame[20:]
    assert tcp_checksum_ok(pkt) == (rfc1071(pseudo_header(seg.src, seg.dst, len(tcp)) + tcp) == 0)


@settings(max_examples=100)
@given(segments(default_options() | explicit_options()))
def test_fast_encode_equals_general_encoder(seg: Segment) -> None:
    assert encode(seg) == encode_with(seg)
    assert tcp_checksum(seg.src, seg.dst, encode(seg)[20:]) == struct.unpack_from(
        "!H", encode(seg), 36)[0]


# --------------------------------------------------------------------------- header length


@settings(max_examples=100)
@given(segments(default_options() | explicit_options()))
def test_header_len_without_encoding(seg: Segment) -> None:
    frame = encode(seg)
    doff_bytes = (frame[32] >> 4) * 4
    assert seg.header_len == doff_bytes
    assert decode(frame).header_len == doff_bytes


def test_decoded_header_len_is_what_arrived() -> None:
    # Options the parser stops on (an EOL, then junk) still occupy doff * 4 bytes.
    junk = bytes.fromhex("020405b4" "00" "ffffff" "ffffffff")
    frame = bytearray(build_frame("10.0.0.2", "10.0.0.1", 1, 2, 3, 4, 0x10, 5, junk))
    seg = decode(bytes(frame))
    assert seg.options.layout == ("mss", "eol") and seg.header_len == 32
    # A changed copy is measured afresh (its bytes would be new).
    assert seg.with_(options=replace(seg.options, layout=())).header_len == 24
    assert seg.with_(options=NO_OPTIONS).header_len == 20


def test_flags_are_plain_ints() -> None:
    seg = decode(encode(DATA))
    assert type(seg.flags) is int and seg.flags == TcpFlags.ACK | TcpFlags.PSH == 0x18
    assert seg.has(TcpFlags.PSH) and not seg.has(TcpFlags.RST)
