"""The nic role: RSS over RX queues, descriptor rings with credits, coalesced MSI-X interrupts.

``model`` is the pure state machine; the process shell feeds it frames from the
wire, refills and unmasks from the cpu actors, and timer firings, and sends what it
returns; ``trace`` records it when tracing is on.
"""

from actors.nic.model import (
    MICROSOFT_RSS_KEY,
    RSS_INDIR_SIZE,
    Dma,
    DmaWrite,
    Nic,
    NicAction,
    NicOutput,
    RaiseIrq,
    RxDrop,
    RxQueue,
    Toeplitz,
    WireTx,
    rss_input,
    toeplitz_hash,
)

__all__ = [
    "MICROSOFT_RSS_KEY",
    "RSS_INDIR_SIZE",
    "Dma",
    "DmaWrite",
    "Nic",
    "NicAction",
    "NicOutput",
    "RaiseIrq",
    "RxDrop",
    "RxQueue",
    "Toeplitz",
    "WireTx",
    "rss_input",
    "toeplitz_hash",
]
