"""The TUN wire process: the nic's ``wire_peer`` when the senders are real Linux sockets.

In its ``__init__`` it enters the run's network namespace, creates the TUN device there
and routes the emulated receiver's address through it (:mod:`actors.tunwire.netns`).
IPv4 TCP frames the kernel sends into the TUN go to the nic as ``wire`` messages, as the
peer actor's do; the nic's ``wire`` messages (the stack's ACKs) are written back into the
TUN, where the namespace's kernel receives them. On ``start`` it spawns the senders
(inside the namespace, killed with it: ``PR_SET_PDEATHSIG``) and the sampler
(:mod:`actors.tunwire.sampler`), which appends ``ss -tin`` every 100 ms to
``RUN_DIR/ss-sender.txt``; the actor folds those samples into its counters as they come,
takes one itself when a sender's FIN or RST goes by, and a last one at the stop.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors.peer.payload import payload_bytes
from actors.runtime import procutil
from actors.runtime.actor import Actor, ActorSettings, RejectMessage, handles
from actors.tunwire.frames import frame_for_nic, frame_problem
from actors.tunwire.netns import (
    SS_FILE,
    ends_connection,
    enter_netns,
    expand,
    fold_view,
    open_tun,
    parse_ss_samples,
    setup_commands,
    whole_samples,
)
from actors.tunwire.sampler import append, take_sample
from protocol import messages as msg
from protocol.envelope import Envelope, MalformedMessage

NIC = "nic"
BURST = 64             # frames read per wake-up and sent per wire message (a NAPI poll's worth)
MAX_PENDING = 512      # beyond this the TUN's own queue holds them (back-pressure)
SS_SAMPLE_MS = 100         # the sampler's period: enough points to plot cwnd and rtt
SS_READ_EVERY_NS = 250_000_000  # folds new samples in, reaps exited senders
SAMPLER_STOP_S = 5.0
_LOG_FIRST_BAD = 20


def _pdeathsig() -> None:
    procutil.set_parent_death_signal(signal.SIGKILL)


class TunWireActor(Actor):
    role = "tunwire"

    def __init__(self, settings: ActorSettings, **kw: Any) -> None:
        super().__init__(settings, **kw)
        cfg = self.config["tunwire"]
        self.netns = str(cfg["netns"])
        self.device = str(cfg["device"])
        self.local, self.remote = str(cfg["local"]), str(cfg["remote"])
        self.senders: list[dict[str, Any]] = list(cfg["senders"])
        self.dir = settings.run_dir / "senders"
        self.dir.mkdir(parents=True, exist_ok=True)
        # This thread (and every process it spawns) now lives in the run's namespace.
        enter_netns(self.netns)
        self.fd = open_tun(self.device)
        for cmd in setup_commands(self.device, self.local, self.remote):
            subprocess.run(cmd, check=True, capture_output=True, timeout=10)
        self.pending: list[bytes] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.c = {"frames_in": 0, "frames_out": 0, "ignored": 0, "tun_write_errors": 0,
                  "ss_samples": 0, "bad_frames": 0}
        self.ss_path = settings.run_dir / SS_FILE
        self._ss_read = 0                              # bytes of ss_path folded in so far
        self.sampler: subprocess.Popen[bytes] | None = None
        self.ss_last: dict[int, dict[str, Any]] = {}   # sport -> last view while connected
        self.ss_max: dict[int, dict[str, Any]] = {}    # sport -> peaks over the run
        self._t_ss = 0
        self._sample_due = False                       # a FIN or RST came: sample first

    # --- the TUN -------------------------------------------------------------------------

    def _tun_readable(self) -> None:
        # Also called while a send blocks: only read here, send from on_timer.
        while len(self.pending) < MAX_PENDING:
            try:
                frame = os.read(self.fd, 65535)
            except BlockingIOError:
                return
            if frame_for_nic(frame):
                self.pending.append(frame)
                self._sample_due = self._sample_due or ends_connection(frame)
            else:
                self.c["ignored"] += 1  # IPv6 neighbour discovery and the like

    def next_deadline(self) -> int | None:
        if self.pending:
            return 0
        return self._t_ss if self.started and self._t_ss else None

    def on_timer(self, now: int) -> None:
        while True:
            if self._sample_due:
                # A sender closed (or reset) its connection: sample its socket before the
                # FIN goes on to the receiver, whose EOF may end the run; the run's summary
                # (its stats come before the stop) then ends with this view. Checked per
                # burst: a blocked send may read the FIN in.
                self._sample_due = False
                append(self.ss_path, take_sample(self.t0_ns or now))
            if not self.pending:
                break
            frames, self.pending = self.pending[:BURST], self.pending[BURST:]
            self.c["frames_in"] += len(frames)
            self.send(NIC, msg.WIRE, {"frames": frames})
        if self._t_ss and now >= self._t_ss:
            self._read_ss(final=False)
            self._t_ss = now + SS_READ_EVERY_NS
        self._reap_senders()

    @handles(msg.WIRE)
    def on_wire(self, env: Envelope, now: int) -> None:
        frames = env.body["frames"]
        try:
            msg.check_ids(env.body.get("ids"), len(frames))
            msg.check_gso(env.body.get("gso"), len(frames))
        except MalformedMessage as exc:
            raise RejectMessage(str(exc)) from None
        for frame in frames:
            # The TUN takes nearly any bytes; the namespace's ip_rcv would drop a broken
            # frame where the run cannot see it, so it is counted here instead.
            problem = frame_problem(frame)
            if problem is not None:
                n = self.c["bad_frames"] = self.c["bad_frames"] + 1
                if n <= _LOG_FIRST_BAD:
                    self.log.warning("bad_frame", problem=problem, count=n)
                continue
            try:
                os.write(self.fd, frame)
                self.c["frames_out"] += 1
            except OSError:
                self.c["tun_write_errors"] += 1

    # --- the senders -----------------------------------------------------------------------

    def on_start(self, now: int) -> None:
        self.mailbox.add_wake_fd(self.fd, self._tun_readable)
        self._t_ss = now + SS_READ_EVERY_NS
        self._start_sampler()
        for s in self.senders:
            self.call_later(int(s["start_ns"]), self._spawner(s))

    def _spawner(self, s: dict[str, Any]) -> Callable[[int], None]:
        return lambda now: self._spawn(s)

    def _spawn(self, s: dict[str, Any]) -> None:
        flow = str(s["flow"])
        values = {"src": self.local, "sport": str(s["sport"]), "dst": self.remote,
                  "dport": str(s["dport"]), "bytes": str(s["bytes"]), "file": ""}
        report = self.dir / f"{flow}.json"
        if s.get("command"):
            values["file"] = str(self._payload_file(s))
            argv = expand(s["command"], values)
        else:
            argv = [sys.executable, "-m", "actors.tunwire.sender", "--src", self.local,
                    "--sport", values["sport"], "--dst", self.remote, "--dport",
                    values["dport"], "--flow-id", str(s["flow_id"]), "--bytes",
                    values["bytes"], "--report", str(report)]
            if s.get("file"):
                argv += ["--file", str(s["file"])]
        with open(self.dir / f"{flow}.out", "ab") as out:
            self.procs[flow] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=subprocess.STDOUT,
                                                preexec_fn=_pdeathsig, close_fds=True)
        self.notify("info", "sender_started", flow=flow, pid=self.procs[flow].pid, argv=argv)

    def _payload_file(self, s: dict[str, Any]) -> Path:
        """What a command sender sends: the scenario's file, or the flow's generated
        payload written out for it (the reference the checker compares with either way)."""
        if s.get("file"):
            return Path(s["file"])
        path = self.dir / f"{s['flow']}.bin"
        if not path.exists():
            path.write_bytes(payload_bytes(int(s["flow_id"]), 0, int(s["bytes"])))
        return path

    def _reap_senders(self) -> None:
        for s in self.senders:
            flow = str(s["flow"])
            p = self.procs.get(flow)
            if p is None or p.returncode is not None or p.poll() is None:
                continue
            report = self.dir / f"{flow}.json"
            if s.get("command") and not report.exists():
                data = self._payload_file(s).read_bytes()
                report.write_text(json.dumps({"bytes": len(data),
                                              "sha256": hashlib.sha256(data).hexdigest(),
                                              "command": True}) + "\n")
            self.notify("info" if p.returncode == 0 else "error", "sender_exited",
                        flow=flow, code=p.returncode)

    # --- the sender side's view ------------------------------------------------------------

    def _start_sampler(self) -> None:
        argv = [sys.executable, "-m", "actors.tunwire.sampler", "--out", str(self.ss_path),
                "--t0-ns", str(self.t0_ns or time.monotonic_ns()),
                "--every-ms", str(SS_SAMPLE_MS)]
        with open(self.dir / "ss-sampler.out", "ab") as out:
            self.sampler = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out,
                                            stderr=subprocess.STDOUT,
                                            preexec_fn=_pdeathsig, close_fds=True)

    def _stop_sampler(self) -> None:
        p, self.sampler = self.sampler, None
        if p is None:
            return
        if p.stdin is not None:
            p.stdin.close()  # EOF: it stops after the sample it is taking
        try:
            p.wait(timeout=SAMPLER_STOP_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=SAMPLER_STOP_S)

    def _read_ss(self, *, final: bool) -> None:
        """Fold the samples the sampler appended since the last call into the last view
        and the peaks of each socket. Until ``final`` a sample not yet whole is left for
        next time: the sampler may be writing it."""
        try:
            with open(self.ss_path, "rb") as f:
                f.seek(self._ss_read)
                data = f.read()
        except OSError:
            return
        if not final:
            data = whole_samples(data)
        self._ss_read += len(data)
        for t_s, socks in parse_ss_samples(data.decode(errors="replace")):
            self.c["ss_samples"] += 1
            for sk in socks:
                self._absorb_ss(t_s, sk)

    def _absorb_ss(self, t_s: float, sk: dict[str, Any]) -> None:
        if sk["peer"].rsplit(":", 1)[0] != self.remote:
            return
        sport = int(sk["sport"])
        self.ss_last[sport] = fold_view(self.ss_last.get(sport), sk, t_s)
        peak = self.ss_max.setdefault(sport, {"zero_window_samples": 0})
        for key in ("cwnd", "retrans", "backoff", "rwnd_limited_ms"):
            if key in sk:
                peak[key] = max(peak.get(key, 0), sk[key])
        # ss prints snd_wnd only when it is not 0: a connected socket with data
        # queued and no snd_wnd in its line is looking at a zero window.
        if sk.get("snd_wnd", 0) == 0 and "cwnd" in sk and sk.get("send_q", 0) > 0:
            peak["zero_window_samples"] += 1

    def on_stop(self, now: int) -> None:
        self._stop_sampler()
        # The last view: the state at the stop, whatever the sampler's phase.
        append(self.ss_path, take_sample(self.t0_ns or now, now))
        self._read_ss(final=True)
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
        self.mailbox.remove_wake_fd(self.fd)
        os.close(self.fd)

    def flow_views(self) -> dict[str, dict[str, Any]]:
        """Per flow: the sender's final ``TCP_INFO`` (built-in senders), the last ``ss``
        view while connected, and the peaks over the samples."""
        out: dict[str, dict[str, Any]] = {}
        for s in self.senders:
            flow, sport = str(s["flow"]), int(s["sport"])
            report: dict[str, Any] = {}
            path = Path(self.dir / f"{flow}.json")
            if path.exists():
                try:
                    report = json.loads(path.read_text())
                except ValueError:
                    report = {}
            info = report.get("tcp_info") or {}
            last = self.ss_last.get(sport, {})
            peak = self.ss_max.get(sport, {})
            p = self.procs.get(flow)
            out[flow] = {
                "kind": "command" if s.get("command") else "builtin",
                "exit": None if p is None else p.poll(),
                "bytes_sent": report.get("bytes"), "sha256": report.get("sha256"),
                "segments_retransmitted": info.get("total_retrans", last.get("retrans")),
                "bytes_retrans": info.get("bytes_retrans", last.get("bytes_retrans")),
                "cwnd": info.get("snd_cwnd", last.get("cwnd")),
                "ssthresh": info.get("snd_ssthresh", last.get("ssthresh")),
                "snd_wnd": info.get("snd_wnd", last.get("snd_wnd")),
                "rtt_ms": round(info["rtt"] / 1000, 3) if "rtt" in info else last.get("rtt_ms"),
                "rwnd_limited_ms": (round(info["rwnd_limited_us"] / 1000, 1)
                                    if "rwnd_limited_us" in info
                                    else peak.get("rwnd_limited_ms")),
                # the ss samples' peak, or the final cwnd if it grew after the last one
                "max_cwnd": max((c for c in (peak.get("cwnd"), info.get("snd_cwnd"))
                                 if c is not None), default=None),
                "max_backoff": peak.get("backoff", 0),
                "zero_window_samples": peak.get("zero_window_samples", 0),
                # its socket as ss -tin last printed it with its tcp_info, for rxpath ss
                "ss": {k: last[k] for k in ("t_s", "samples", "state", "recv_q", "send_q",
                                            "local", "peer", "line", "info", "then_state",
                                            "then_t_s") if k in last},
            }
        return out

    def counters(self) -> dict[str, Any]:
        # The launcher's last stats request comes before the stop: fold in what the
        # sampler has written by now, so the run's summary has the newest view.
        self._read_ss(final=False)
        return {**self.c, "netns": self.netns, "device": self.device,
                "flows": self.flow_views(), "time_ns": time.monotonic_ns()}
