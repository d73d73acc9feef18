"""The raw transport baseline: what a chain of processes costs with plain pyzmq + msgpack.

The benchmark process pushes frames into a chain of ``hops`` forwarder processes and
pulls them back out of the last one::

    bench --PUSH--> hop1 --> hop2 --> ... --> hopN --PUSH--> bench (PULL)

Each forwarder decodes every frame and encodes it again (as an actor would, with one
reused ``msgpack.Packer``).  PUSH/PULL over ``ipc://`` blocks at the high-water mark,
so nothing is dropped.  No envelope, no schema: this is the floor the actor runtime
is measured against.

Two figures per run:

- throughput: ``messages`` small items (a descriptor-sized list each) in frames of
  ``batch`` items, pipelined; items/s and frames/s end to end;
- latency: one frame at a time, round trip through the chain; ``per_hop_us`` is the
  round trip divided by the ``hops + 1`` links it crosses.

CLI: ``python -m actors.runtime.hopbench --hops 4 --messages 200000 --batch 64``
prints the result as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import zmq

from actors.runtime import procutil

PROJECT_ROOT = Path(__file__).resolve().parents[2]
END_MARKER = b""          # an empty frame: forward it, then exit
_HWM = 1000


def _item(i: int) -> list[int]:
    # About the size of an RX descriptor notice: seq, queue, length, timestamp.
    return [i, 0, 1500, 0]


def forward(in_endpoint: str, out_endpoint: str) -> int:
    """One hop: PULL from ``in_endpoint``, decode, re-encode, PUSH to ``out_endpoint``,
    until the end marker (forwarded too)."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, _HWM)
    pull.bind(in_endpoint)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, _HWM)
    push.connect(out_endpoint)
    packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    recv, send, unpackb, pack = pull.recv, push.send, msgpack.unpackb, packer.pack
    frames = 0
    cpu0 = 0
    try:
        frame = recv()
        cpu0 = time.process_time_ns()  # from the first frame: start-up is left out
        while frame != END_MARKER:
            send(pack(unpackb(frame)))
            frames += 1
            frame = recv()
        send(END_MARKER)
        # The bench reads this line for the hop's CPU cost per frame.
        print(json.dumps({"frames": frames, "cpu_ns": time.process_time_ns() - cpu0}),
              flush=True)
        return 0
    finally:
        # The bench acknowledges the end marker by reading it before it waits for us,
        # so a LINGER flush is only a courtesy here.
        pull.close(linger=0)
        push.close(linger=1000)
        ctx.term()


def run_hop_benchmark(hops: int, messages: int, batch: int = 1, *,
                      rtt_samples: int = 200, timeout_s: float = 120.0) -> dict[str, Any]:
    """Measure a chain of ``hops`` forwarder processes; see the module docstring.

    Returns ``hops, links, messages, batch, frames, elapsed_s, messages_per_s,
    frames_per_s, rtt_samples, rtt_us_median, rtt_us_p90, rtt_us_min, per_hop_us,
    hop_cpu_us_per_frame`` (one figure per forwarder, from its first frame to the end
    marker) and ``bench_cpu_us_per_message`` (this process, both ends, while streaming).
    Raises TimeoutError if the chain stalls for ``timeout_s``.
    """
    if hops < 1 or messages < 1 or batch < 1 or rtt_samples < 1:
        raise ValueError("hops, messages, batch and rtt_samples must be positive")
    workdir = tempfile.mkdtemp(prefix="rxhop")
    endpoints = [f"ipc://{workdir}/h{i}" for i in range(hops)] + [f"ipc://{workdir}/sink"]
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(PROJECT_ROOT) + (os.pathsep + path if path else "")
    procs: list[subprocess.Popen[bytes]] = []
    ctx = zmq.Context()
    sink = ctx.socket(zmq.PULL)
    source = ctx.socket(zmq.PUSH)
    try:
        sink.setsockopt(zmq.RCVHWM, _HWM)
        sink.bind(endpoints[-1])
        for i in range(hops):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "actors.runtime.hopbench", "--forward",
                 endpoints[i], endpoints[i + 1], "--parent-pid", str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env,
                start_new_session=True))
        source.setsockopt(zmq.SNDHWM, _HWM)
        source.connect(endpoints[0])
        deadline = time.monotonic() + timeout_s
        # Warm-up: one frame through the whole chain proves every hop is up.
        _round_trip(source, sink, msgpack.packb([_item(0)]), deadline)

        frame = msgpack.packb([_item(i) for i in range(batch)])
        rtts = [_round_trip(source, sink, frame, deadline) for _ in range(rtt_samples)]

        cpu0 = time.process_time_ns()
        frames, elapsed = _stream(source, sink, messages, batch, deadline)
        bench_cpu_ns = time.process_time_ns() - cpu0

        source.send(END_MARKER)
        _recv_until(sink, END_MARKER, deadline)
        left = procutil.wait_pids_gone([p.pid for p in procs], 5.0)
        if left:
            raise RuntimeError(f"forwarders did not exit: {left}")
        hop_cpu = []
        for p in procs:
            assert p.stdout is not None
            report = json.loads(p.stdout.read() or b"{}")
            hop_cpu.append(report.get("cpu_ns", 0) / 1000 / max(1, report.get("frames", 0)))
    finally:
        for p in procs:
            if p.poll() is None:
                procutil.signal_group(p.pid, signal.SIGKILL)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
            if p.stdout is not None:
                p.stdout.close()
        source.close(linger=0)
        sink.close(linger=0)
        ctx.term()
        shutil.rmtree(workdir, ignore_errors=True)
    rtts.sort()
    median_ns = statistics.median(rtts)
    return {
        "hops": hops,
        "links": hops + 1,
        "messages": messages,
        "batch": batch,
        "frames": frames,
        "elapsed_s": elapsed / 1e9,
        "messages_per_s": messages * 1e9 / elapsed,
        "frames_per_s": frames * 1e9 / elapsed,
        "rtt_samples": rtt_samples,
        "rtt_us_median": median_ns / 1e3,
        "rtt_us_p90": rtts[min(len(rtts) - 1, int(len(rtts) * 0.9))] / 1e3,
        "rtt_us_min": rtts[0] / 1e3,
        "per_hop_us": median_ns / 1e3 / (hops + 1),
        # CPU per frame in each forwarder, and per item in the bench (source + sink).
        "hop_cpu_us_per_frame": [round(c, 2) for c in hop_cpu],
        "bench_cpu_us_per_message": round(bench_cpu_ns / 1000 / messages, 2),
    }


def _poll_or_timeout(poller: zmq.Poller, deadline: float) -> dict[zmq.Socket, int]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("hop benchmark: the chain stalled")
    return dict(poller.poll(min(1000, int(remaining * 1000) + 1)))


def _round_trip(source: zmq.Socket, sink: zmq.Socket, frame: bytes, deadline: float) -> int:
    t0 = time.perf_counter_ns()
    source.send(frame)
    poller = zmq.Poller()
    poller.register(sink, zmq.POLLIN)
    while not _poll_or_timeout(poller, deadline):
        pass
    sink.recv()
    return time.perf_counter_ns() - t0


def _recv_until(sink: zmq.Socket, marker: bytes, deadline: float) -> None:
    poller = zmq.Poller()
    poller.register(sink, zmq.POLLIN)
    while True:
        if _poll_or_timeout(poller, deadline) and sink.recv() == marker:
            return


def _stream(source: zmq.Socket, sink: zmq.Socket, messages: int, batch: int,
            deadline: float) -> tuple[int, int]:
    """Pipeline ``messages`` items in frames of ``batch``; returns (frames, elapsed ns).

    One thread does both ends, so sends are non-blocking and interleaved with receives
    (a blocking send with a full chain would never let the chain drain)."""
    full = msgpack.packb([_item(i) for i in range(batch)])
    rest = messages % batch
    frames = messages // batch + (1 if rest else 0)
    last = msgpack.packb([_item(i) for i in range(rest)]) if rest else full
    poller = zmq.Poller()
    poller.register(sink, zmq.POLLIN)
    poller.register(source, zmq.POLLOUT)
    sent = received = 0
    t0 = time.perf_counter_ns()
    while received < frames:
        events = _poll_or_timeout(poller, deadline)
        if sent < frames and events.get(source, 0) & zmq.POLLOUT:
            try:
                while sent < frames:
                    source.send(last if sent == frames - 1 else full, zmq.NOBLOCK)
                    sent += 1
            except zmq.Again:
                pass
            if sent == frames:
                poller.unregister(source)
        if events.get(sink, 0) & zmq.POLLIN:
            try:
                while received < frames:
                    sink.recv(zmq.NOBLOCK)
                    received += 1
            except zmq.Again:
                pass
    return frames, time.perf_counter_ns() - t0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m actors.runtime.hopbench",
                                description="Raw pyzmq + msgpack process-chain benchmark.")
    p.add_argument("--hops", type=int, default=4)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rtt-samples", type=int, default=200)
    p.add_argument("--forward", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.forward:
        procutil.set_parent_death_signal(signal.SIGKILL)
        if args.parent_pid is not None and os.getppid() != args.parent_pid:
            return 75
        return forward(*args.forward)
    result = run_hop_benchmark(args.hops, args.messages, args.batch,
                               rtt_samples=args.rtt_samples)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
