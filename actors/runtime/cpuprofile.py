"""A sampling profiler of an actor's main thread, weighted by the CPU time it used.

A wall-clock sampler (py-spy) counts a thread that is runnable but waiting for a core
as busy where it was preempted. On a machine with more runnable threads than cores,
that is often just after a ZeroMQ send woke another thread, so sends look like most
of the work. This sampler is a POSIX timer on the main thread's own CPU clock
(``CLOCK_THREAD_CPUTIME_ID``, signalling that thread alone): it fires only while the
thread runs, and charges the CPU time the thread used since the previous sample to the
Python stack it interrupted. ZeroMQ's I/O thread is not in it: `rxpath bench` shows
that thread's share separately. Where the timer cannot be made, the process's CPU
clock (``ITIMER_PROF``) drives it instead; the I/O thread's CPU then also triggers
samples, charged to wherever the main thread next runs (often a poll).

Python runs the handler between two bytecodes of the main thread, so time in a C call
(a hash, a poll) is charged to the line that made it. The output is collapsed stacks,
``frame;frame;... weight`` (outermost first, a frame ``func (path:line)``, the weight in
microseconds), which flame-graph tools and :func:`cli.bench.top_functions` read.

An actor samples itself when :data:`CPU_PROFILE_ENV` names a directory: from the run's
``start`` until its loop ends, into ``<dir>/<actor>.cpu.txt`` (and ``<actor>.cpu.json``:
the sample count, the CPU they cover, the clock). The kernel checks CPU timers at its
tick, so a sample is one tick of CPU (4 ms at HZ=250) at the finest: a short run gets few.
"""

from __future__ import annotations

import ctypes
import json
import signal
import sysconfig
import threading
import time
from pathlib import Path
from types import FrameType

CPU_PROFILE_ENV = "RXPATH_CPU_PROFILE"
INTERVAL_S = 0.001  # of CPU time between two samples (the kernel's tick rounds it up)

Frame = tuple[str, str, int]  # function, file, line

_CLOCK_THREAD_CPUTIME_ID = 3
_SIGEV_THREAD_ID = 4


class _Sigevent(ctypes.Structure):  # struct sigevent, Linux x86-64 and arm64 (64 bytes)
    _fields_ = [("sigev_value", ctypes.c_void_p), ("sigev_signo", ctypes.c_int),
                ("sigev_notify", ctypes.c_int), ("sigev_tid", ctypes.c_int),
                ("_pad", ctypes.c_int * 11)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _thread_cpu_timer(interval_s: float) -> tuple[ctypes.CDLL, ctypes.c_void_p] | None:
    """A timer on this thread's CPU clock that sends SIGPROF to this thread, armed; or
    None where libc has no such timer."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        sev = _Sigevent(sigev_signo=signal.SIGPROF, sigev_notify=_SIGEV_THREAD_ID,
                        sigev_tid=threading.get_native_id())
        timer = ctypes.c_void_p()
        if libc.timer_create(_CLOCK_THREAD_CPUTIME_ID, ctypes.byref(sev),
                             ctypes.byref(timer)) != 0:
            return None
        sec, nsec = divmod(int(interval_s * 1e9), 1_000_000_000)
        every = _Timespec(sec, nsec)
        if libc.timer_settime(timer, 0, ctypes.byref(_Itimerspec(every, every)), None) != 0:
            libc.timer_delete(timer)
            return None
        return libc, timer
    except (OSError, AttributeError):
        return None


class CpuSampler:
    def __init__(self, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.stacks: dict[tuple[Frame, ...], int] = {}  # stack -> main-thread CPU ns
        self.samples = 0
        self._last_ns = 0
        self._running = False
        self._timer: tuple[ctypes.CDLL, ctypes.c_void_p] | None = None
        self.clock = ""  # "thread" or "process": which CPU clock drives the samples

    def start(self) -> None:
        """Start sampling the calling thread (the main thread: Python runs signal
        handlers there)."""
        self._last_ns = time.thread_time_ns()
        signal.signal(signal.SIGPROF, self._sample)
        signal.siginterrupt(signal.SIGPROF, False)  # restart what the signal interrupts
        self._timer = _thread_cpu_timer(self.interval_s)
        self.clock = "thread" if self._timer is not None else "process"
        if self._timer is None:
            signal.setitimer(signal.ITIMER_PROF, self.interval_s, self.interval_s)
        self._running = True

    def stop(self) -> None:
        if self._running:
            if self._timer is not None:
                libc, timer = self._timer
                libc.timer_delete(timer)
                self._timer = None
            else:
                signal.setitimer(signal.ITIMER_PROF, 0, 0)
            signal.signal(signal.SIGPROF, signal.SIG_DFL)
            self._running = False

    def _sample(self, _signum: int, frame: FrameType | None) -> None:
        now = time.thread_time_ns()
        used, self._last_ns = now - self._last_ns, now
        stack: list[Frame] = []
        while frame is not None:
            code = frame.f_code
            stack.append((code.co_name, code.co_filename, frame.f_lineno or 0))
            frame = frame.f_back
        key = tuple(reversed(stack))
        self.stacks[key] = self.stacks.get(key, 0) + used
        self.samples += 1

    def collapsed(self, root: Path | None = None) -> list[str]:
        """The stacks as collapsed lines, heaviest first; paths relative to ``root``, or to
        the library directory they are in (``zmq/sugar/poll.py``)."""
        bases = [root] if root is not None else []
        bases += sorted({Path(p) for k in ("purelib", "platlib", "stdlib")
                         if (p := sysconfig.get_paths().get(k))}, key=lambda b: -len(b.parts))

        def where(path: str) -> str:
            for base in bases:
                try:
                    return str(Path(path).relative_to(base))
                except ValueError:
                    pass
            return path

        lines = []
        for key, ns in sorted(self.stacks.items(), key=lambda kv: -kv[1]):
            us = ns // 1000
            if us:
                frames = ";".join(f"{fn} ({where(path)}:{line})" for fn, path, line in key)
                lines.append(f"{frames} {us}")
        return lines

    def write(self, path: Path, root: Path | None = None) -> None:
        """The collapsed stacks to ``path`` (``<actor>.cpu.txt``), and beside it
        ``<actor>.cpu.json``: how many samples, and which clock drove them."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in self.collapsed(root)))
        meta = {"samples": self.samples, "clock": self.clock,
                "cpu_ms": round(sum(self.stacks.values()) / 1e6, 1)}
        path.with_suffix(".json").write_text(json.dumps(meta) + "\n")
