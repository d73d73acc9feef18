"""Every message kind that crosses an actor boundary, with its body schema.

The set is closed: a kind that is not declared here (or in a ``protocol`` module that
this one imports) is rejected by every receiver as ``unknown_kind``.  See
:mod:`protocol.envelope` for the envelope, the schema field types and the codec.

Request/reply pairs carry a ``request_id`` chosen by the requester and echoed by the
replier: the transport is one-way messages only.

Control kinds (runtime <-> launcher, and the end-of-stream handshake between any two
actors) are declared first; data kinds follow, one section per role.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol.envelope import ListOf, MalformedMessage, register_kind

# --- control: actor lifecycle and telemetry -------------------------------------------

READY = register_kind(
    "ready", {"pid": int, "role": str, "instance": int, "endpoint": str},
    doc="actor -> launcher: inbox bound, outboxes connected, waiting for start")
START = register_kind(
    "start", {"t0_ns": int},
    doc="launcher -> actor: every actor is ready; traffic may flow (t0_ns: run start)")
STOP = register_kind(
    "stop", {"reason": str},
    doc="launcher -> actor: finish the current message, flush, send final stats, exit 0")
HEARTBEAT = register_kind(
    "heartbeat", {"counters": dict},
    doc="actor -> launcher, every heartbeat_ms: a snapshot of the actor's counters")
STATS_REQUEST = register_kind(
    "stats_request", {"request_id": int},
    doc="any -> actor: ask for a counters snapshot")
STATS = register_kind(
    "stats", {"counters": dict, "final": bool}, optional={"request_id": int},
    doc="actor -> requester: counters snapshot; final=True is the last one before exit")
LOG_EVENT = register_kind(
    "log_event", {"level": str, "event": str, "fields": dict},
    doc="actor -> launcher: a notable event the launcher should see (also logged locally)")
END_OF_STREAM = register_kind(
    "end_of_stream", {"request_id": int},
    doc="sender -> receiver: nothing follows on this link; acknowledge before I close")
END_OF_STREAM_ACK = register_kind(
    "end_of_stream_ack", {"request_id": int},
    doc="receiver -> sender: end_of_stream seen; the sender may close its socket")

# A `bundle` (protocol.envelope.BUNDLE, sent by Mailbox.send_many) carries several
# messages of one kind under one envelope; receivers unpack it before dispatch.

CONTROL_KINDS = frozenset({
    READY, START, STOP, HEARTBEAT, STATS_REQUEST, STATS, LOG_EVENT,
    END_OF_STREAM, END_OF_STREAM_ACK,
})

# --- data kinds ------------------------------------------------------------------------
# Each role declares the kinds it sends here (or in a protocol module imported below),
# with register_kind(name, {field: type, ...}); for example, a NIC -> CPU DMA batch
# might be: register_kind("dma_batch", {"queue": int, "frames": ListOf(bytes)}).

# --- the wire and the NIC --------------------------------------------------------------
# Optional `ids`: one run-unique trace flow id per frame, in the order of `frames`, so a
# trace can follow each frame across processes (see actors/runtime/trace.py).
# Optional `gso`: one GSO size per frame, 0 for none (the virtio_net_hdr of a tun write:
# a super-packet cut at that size), sent only when some frame has one.
WIRE = register_kind(
    "wire", {"frames": ListOf(bytes)},
    optional={"ids": ListOf(int), "xmit_ns": int, "gso": ListOf(int)},
    doc="peer -> nic: frames reaching the NIC from the wire; nic -> peer: frames it sent")
DMA = register_kind(
    "dma", {"queue": int, "frames": ListOf(bytes)},
    optional={"ids": ListOf(int), "gso": ListOf(int)},
    doc="nic -> cpu: frames written into descriptors of the queue's RX ring")
IRQ = register_kind("irq", {"queue": int}, doc="nic -> cpu: the queue's interrupt fired")
REFILL = register_kind(
    "refill", {"queue": int, "n": int},
    doc="cpu -> nic: n descriptors of the queue's ring are free again (credits)")
UNMASK = register_kind(
    "unmask", {"queue": int}, doc="cpu -> nic: napi_complete_done re-enabled the queue's IRQ")

# --- softirq -> stack ------------------------------------------------------------------
RCV_BATCH = register_kind(
    "rcv_batch", {"batch": int, "frames": ListOf(bytes)},
    optional={"ids": ListOf(int), "gso": ListOf(int), "segs": ListOf(int)},
    doc="cpu -> stack: one napi_poll's frames that passed ip_rcv, for tcp_v4_rcv in order; "
        "segs: the wire frames each GRO skb holds (NAPI_GRO_CB(skb)->count), when any "
        "holds more than one")


def check_segs(segs: Sequence[int] | None, gso: Sequence[int] | None, frames: int) -> None:
    """A ``segs`` list (rcv_batch) comes with ``gso`` sizes and gives one wire-frame count
    >= 1 per frame, and a frame holding several has a GSO size (GRO sets gso_size on every
    skb it merged). Raises MalformedMessage, like :func:`check_gso`."""
    if segs is None:
        return
    if gso is None:
        raise MalformedMessage("bad_segs", "segs without gso sizes")
    if len(segs) != frames or min(segs, default=1) < 1:
        raise MalformedMessage(
            "bad_segs", f"segs: {len(segs)} counts (min {min(segs, default=1)}) "
                        f"for {frames} frames")
    if any(n > 1 and not gso[i] for i, n in enumerate(segs)):
        raise MalformedMessage("bad_segs", "segs: a frame of several has no gso size")


def check_gso(gso: Sequence[int] | None, frames: int) -> None:
    """A ``gso`` list (wire, dma, rcv_batch) gives one size >= 0 per frame; the schema has
    checked its type. Raises MalformedMessage: the message is rejected, like one that
    fails its schema."""
    if gso is not None and (len(gso) != frames or min(gso, default=0) < 0):
        raise MalformedMessage(
            "bad_gso", f"gso: {len(gso)} sizes (min {min(gso, default=0)}) for {frames} frames")


def check_ids(ids: Sequence[int] | None, frames: int) -> None:
    """An ``ids`` list (wire, dma, rcv_batch, tx) gives one trace id per frame, in order;
    the schema has checked its type. Raises MalformedMessage: one of another length
    cannot be matched to its frames."""
    if ids is not None and len(ids) != frames:
        raise MalformedMessage("bad_ids", f"ids: {len(ids)} trace ids for {frames} frames")


RCV_DONE = register_kind(
    "rcv_done", {"batch": int},
    doc="stack -> cpu: every frame of the batch went through tcp_v4_rcv")
RCV_PROGRESS = register_kind(
    "rcv_progress", {"segments": int},
    doc="stack -> its rcv_watcher (if the topology names one): frames through tcp_v4_rcv so "
        "far, after each run of them")
TX = register_kind("tx", {"frames": ListOf(bytes)}, optional={"ids": ListOf(int)},
                   doc="stack -> nic: segments to transmit")

# --- readers' system calls -------------------------------------------------------------
SOCK_OP = register_kind(
    "sock_op", {"request_id": int, "op": str, "sock": int, "args": dict},
    doc="reader -> stack: one process-context step (lock_sock, recv_copy, sk_wait_data...)")
SOCK_OP_DONE = register_kind(
    "sock_op_done", {"request_id": int, "result": dict},
    doc="stack -> reader: the step's result (at once, or when a sleeping step completes)")

# --- faults injected by the launcher ----------------------------------------------------
LINK_FAULT = register_kind(
    "link_fault", {"dest": str, "mode": str, "delay_ns": int},
    doc="launcher -> actor: hold what it sends to dest ('cut': until 'heal'; 'delay': each "
        "message by delay_ns); 'heal' releases everything held, in order. Nothing is lost: "
        "a cut link behaves like a partition the transport rides out")
