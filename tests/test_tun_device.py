"""The receive device's kind: a tun device's skbs and GSO sizes, through the model and
through the real nic, cpu and stack processes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from actors.cpu.napi import RcvBatch, Softirq
from actors.nic import Nic
from actors.nic.model import DmaWrite
from actors.profiles import Sysctls, get_profile
from actors.runtime.launcher import Launcher
from actors.stack.skb import PAGE_SIZE, SKB_STRUCT_SIZE, device_skb, rx_truesize, tun_skb
from actors.stack.tcp import tcp_get_info
from actors.stack.tcp_ipv4 import Stack
from cli.drill import run_script
from cli.drill.pipeline import drill_scenario, drill_topology
from cli.drill.runner import LOCAL_IP, Outcome
from protocol import messages as msg
from protocol.envelope import MalformedMessage
from protocol.segment import Segment, TcpFlags, TcpOptions
from protocol.seq import seq_add
from protocol.sockops import Accepted, InetAccept
from protocol.wire import encode

DRILL_DIR = Path(__file__).parent / "drill"
REMOTE = "192.0.2.1"
PORT = 5001
SPORT = 40001
ISN = 1000
TIMEOUT_S = 20.0


# -- the skb a tun device builds ------------------------------------------------------------


def test_tun_skb_of_a_small_packet_is_a_kmalloc_head() -> None:
    # 1000 bytes of payload: 64 headroom + 1040 -> 1152 aligned + 320 shared info = 1472,
    # a 2 KiB slab object; the head cannot be stolen by skb_try_coalesce.
    assert tun_skb(1040) == (2048 + SKB_STRUCT_SIZE, False)
    # Just under a page with the headroom: still linear, in an 8 KiB object.
    assert tun_skb(PAGE_SIZE - 64 - 1) == (8192 + SKB_STRUCT_SIZE, False)


def test_tun_skb_of_a_gso_packet_is_paged() -> None:
    # 10000 bytes cooked as one GSO packet: whole pages for headroom, shinfo and data.
    assert tun_skb(10040) == (3 * PAGE_SIZE + SKB_STRUCT_SIZE, True)
    assert tun_skb(PAGE_SIZE - 64)[1] is True  # from a page's worth on: page fragments


def test_nic_skb_is_the_rings_buffers() -> None:
    assert device_skb("nic", 1040) == (rx_truesize(14 + 1040), True) == (2304, True)
    assert device_skb("nic", 1840) == (2304, True)
    assert device_skb("tun", 1840) == (4096 + SKB_STRUCT_SIZE, False)


# -- the stack model sizes skbs for its device -------------------------------------------


def _seg(seq: int, ack: int, flags: int, payload: bytes = b"",
         options: TcpOptions | None = None) -> Segment:
    return Segment(src=REMOTE, sport=SPORT, dst=LOCAL_IP, dport=PORT, seq=seq, ack=ack,
                   flags=flags, window=1000, options=options or TcpOptions(),
                   payload=payload)


def established(device: str) -> tuple[Stack, int, int]:
    """A stack on ``device`` with one accepted connection: (stack, sock id, our iss)."""
    stack = Stack(get_profile("modern"), seed=1, device=device)  # type: ignore[arg-type]
    lsn = stack.listen(LOCAL_IP, PORT, 0)
    stack.tcp_v4_rcv_frame(encode(_seg(ISN, 0, TcpFlags.SYN,
                                       options=TcpOptions(mss=1460, wscale=7))), 0)
    synack = next(o.segment for o in stack.take_outputs() if hasattr(o, "segment"))
    iss = synack.seq
    stack.tcp_v4_rcv_frame(encode(_seg(ISN + 1, seq_add(iss, 1), TcpFlags.ACK)), 0)
    res = stack.sock_op("app", InetAccept(lsn), 0)
    assert isinstance(res, Accepted), res
    stack.take_outputs()
    return stack, res.sock, iss


@pytest.mark.parametrize(("device", "truesize", "head_frag"),
                         [("nic", 2304, True), ("tun", 4352, False)])
def test_stack_frame_gets_its_devices_truesize(device: str, truesize: int,
                                               head_frag: bool) -> None:
    stack, sock, iss = established(device)
    data = _seg(ISN + 1, seq_add(iss, 1), TcpFlags.ACK | TcpFlags.PSH, b"x" * 1800)
    stack.tcp_v4_rcv_frame(encode(data), 1)
    sk = stack.socks[sock]
    skb = sk.receive_queue[-1]
    assert (skb.truesize, skb.head_frag) == (truesize, head_frag)
    assert sk.rmem_alloc == truesize


def test_stack_frame_gso_size_sets_gso_segs_and_rcv_mss() -> None:
    stack, sock, iss = established("tun")
    data = _seg(ISN + 1, seq_add(iss, 1), TcpFlags.ACK, b"y" * 7000)
    stack.tcp_v4_rcv_frame(encode(data), 1, gso_size=700)
    sk = stack.socks[sock]
    skb = sk.receive_queue[-1]
    assert (skb.gso_size, skb.gso_segs) == (700, 10)
    assert skb.truesize == tun_skb(7040)[0] and skb.head_frag
    assert tcp_get_info(sk, 1)["rcv_mss"] == 700
    assert sk.segs_in == 1 + 10  # the handshake's ACK, then every wire segment


def test_stack_frame_without_gso_measures_the_advertised_mss() -> None:
    stack, sock, iss = established("tun")
    stack.tcp_v4_rcv_frame(encode(_seg(ISN + 1, seq_add(iss, 1), TcpFlags.ACK,
                                       b"y" * 7000)), 1)
    assert tcp_get_info(stack.socks[sock], 1)["rcv_mss"] == 1460


# -- the GSO size through the nic and napi -----------------------------------------------


def _frame(n: int, dst: str = LOCAL_IP, sport: int = SPORT) -> bytes:
    return encode(Segment(src=REMOTE, sport=sport, dst=dst, dport=PORT, seq=n, ack=1,
                          flags=TcpFlags.ACK, window=1000, payload=b"z" * (n % 7 + 1)))


def test_nic_keeps_each_gso_size_with_its_frame_into_the_dma_write() -> None:
    nic = Nic(1, 16)
    frames = [_frame(i) for i in range(4)]
    out = nic.rx_burst(frames, 0, gso=[0, 1000, 0, 1448])
    (write,) = [a for a in out if isinstance(a, DmaWrite)]
    assert write.frames == frames and write.gso == [0, 1000, 0, 1448]
    (plain,) = [a for a in nic.rx_burst(frames[:2], 1) if isinstance(a, DmaWrite)]
    assert plain.gso is None  # nothing extra on the common path


def test_nic_tells_a_ring_nothing_about_gso_when_its_frames_have_none() -> None:
    nic = Nic(2, 16)
    frames = [_frame(i, sport=40000 + i) for i in range(12)]
    queues = [nic.rss_queue(f) for f in frames]
    assert set(queues) == {0, 1}
    gso = [700 if q == 0 else 0 for q in queues]
    writes = {a.queue: a for a in nic.rx_burst(frames, 0, gso=gso)
              if isinstance(a, DmaWrite)}
    assert writes[0].gso == [700] * queues.count(0)
    assert writes[1].gso is None


@pytest.mark.parametrize("gso", [[1000], [0, 0, 0], [0, -1]])
def test_nic_rejects_a_gso_list_that_does_not_fit_before_receiving(gso: list[int]) -> None:
    nic = Nic(1, 16)
    with pytest.raises(MalformedMessage, match="bad_gso"):
        nic.rx_burst([_frame(1), _frame(2)], 0, gso=gso)
    assert nic.rx_packets == 0 and nic.credits(0) == 16


def _softirq(weight: int = 64) -> Softirq:
    return Softirq(0, [0], 16, Sysctls(), weight=weight, local_addrs=frozenset({LOCAL_IP}))


def test_napi_carries_gso_sizes_through_the_ring_into_the_batches() -> None:
    sirq = _softirq(weight=3)
    frames = [_frame(i) for i in range(5)]
    # Two DMA writes, the second without GSO sizes; a frame for another host in between
    # is dropped by ip_rcv and takes its GSO size with it.
    sirq.rx_dma(0, [*frames[:2], _frame(9, dst="198.51.100.7")], 0, gso=[1000, 0, 1200])
    sirq.rx_dma(0, frames[2:], 0)
    first = [o for o in sirq.rx_irq(0, 0) if isinstance(o, RcvBatch)]
    assert len(first) == 1 and first[0].frames == frames[:2] and first[0].gso == [1000, 0]
    nxt = [o for o in sirq.rcv_done(first[0].batch, 1) if isinstance(o, RcvBatch)]
    assert len(nxt) == 1 and nxt[0].frames == frames[2:] and nxt[0].gso is None
    assert not sirq.napis[0].ring_gso


def test_napi_batch_without_gso_sizes_carries_none() -> None:
    sirq = _softirq()
    sirq.rx_dma(0, [_frame(1), _frame(2)], 0, gso=[0, 0])
    (batch,) = [o for o in sirq.rx_irq(0, 0) if isinstance(o, RcvBatch)]
    assert batch.gso is None


def test_napi_rejects_a_bad_gso_list_with_the_ring_untouched() -> None:
    sirq = _softirq()
    with pytest.raises(MalformedMessage, match="bad_gso"):
        sirq.rx_dma(0, [_frame(1), _frame(2)], 0, gso=[700])
    assert sirq.ring_len(0) == 0 and sirq.frames_in == 0


def test_napi_reset_forgets_the_gso_sizes_of_lost_frames() -> None:
    sirq = _softirq()
    sirq.rx_dma(0, [_frame(1)], 0, gso=[700])
    sirq.reset()
    sirq.rx_dma(0, [_frame(2)], 0)
    (batch,) = [o for o in sirq.rx_irq(0, 0) if isinstance(o, RcvBatch)]
    assert batch.gso is None


# -- real processes ----------------------------------------------------------------------


def pipeline(run_dir: Path) -> Launcher:
    prof = get_profile("modern")
    sc = drill_scenario(prof, prof.default_sysctls, seed=1)
    assert sc.nic.device == "tun"
    sc = replace(sc, stack=replace(sc.stack, listen_port=PORT))
    return Launcher(drill_topology(sc), run_dir, ready_timeout_s=30.0)


def _rejected(launcher: Launcher, actor: str) -> dict[str, int]:
    stats = launcher.request_stats([actor], timeout_s=TIMEOUT_S)[actor]
    return dict(stats["transport"]["rejected_messages"])


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_malformed_gso_lists_are_counted_and_the_actors_keep_running(run_dir: Path) -> None:
    with pipeline(run_dir) as launcher:
        frame = _frame(5)
        # The stack: a list of the wrong length is rejected, but the batch's frames go
        # through tcp_v4_rcv (their cpu waits for the rcv_done).
        launcher.send("stack", msg.RCV_BATCH, {"batch": 7, "frames": [frame, frame],
                                               "gso": [1000]})
        assert launcher.wait_for(lambda e: e.kind == msg.RCV_DONE
                                 and e.body["batch"] == 7, TIMEOUT_S) is not None
        # The nic: a wire burst with a bad list is refused before any frame is taken.
        launcher.send("nic", msg.WIRE, {"frames": [frame], "gso": [1000, 0]})
        launcher.send("nic", msg.WIRE, {"frames": [frame], "gso": [-5]})
        stack_rej: dict[str, int] = {}
        nic_rej: dict[str, int] = {}
        for _ in range(200):
            stack_rej, nic_rej = _rejected(launcher, "stack"), _rejected(launcher, "nic")
            if sum(stack_rej.values()) >= 1 and sum(nic_rej.values()) >= 2:
                break
        assert stack_rej == {"rejected_by_handler": 1}, stack_rej
        assert nic_rej == {"rejected_by_handler": 2}, nic_rej
        stack = launcher.request_stats(["stack"], timeout_s=TIMEOUT_S)["stack"]["role"]
        assert stack["segments"] == 2
        # Both still serve: a handshake through the nic is answered.
        launcher.send("nic", msg.WIRE, {"frames": [encode(_seg(
            ISN, 0, TcpFlags.SYN, options=TcpOptions(mss=1460, wscale=7)))]})
        assert launcher.wait_for(lambda e: e.kind == msg.WIRE, TIMEOUT_S) is not None
    for name in ("stack", "nic"):
        assert "bad_gso" in (run_dir / "logs" / f"{name}.jsonl").read_text()


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("profile", ["modern", "legacy"])
@pytest.mark.parametrize("script", ["tun_truesize", "gso_rcv_mss"])
def test_tun_scripts_pass_in_both_modes(script: str, profile: str) -> None:
    """The tun truesize sets the window, the GSO size sets tcpi_rcv_mss: the same in
    the model and through the nic, cpu0 and stack processes."""
    path = DRILL_DIR / f"{script}.pkt"
    for pipeline_mode in (False, True):
        res = run_script(path, profile, pipeline=pipeline_mode, verbose=True)
        assert res.outcome is Outcome.PASS, (pipeline_mode, res.mismatch.format(res.path)
                                             if res.mismatch else res.skip_reason, res.log)
