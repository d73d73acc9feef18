"""The protocol stack: tcp_hashinfo and every ``struct sock``.

Pure model modules (mirroring the kernel files they are named after):

- ``skb``: the socket buffer as the stack sees it (sequence range, truesize).
- ``sock``: the per-connection state (``struct sock`` + ``tcp_sock`` + ``icsk``).
- ``net``: the per-stack context: profile, sysctls, MIB counters, outputs, ``current``.
- ``tcp_input``: ``tcp_rcv_established``, ``tcp_data_queue``, the ofo queue, SACK/DSACK,
  ACK scheduling, memory pruning, autotuning.
- ``tcp_output``: ``tcp_select_window`` and the segments the receiver sends.
- ``tcp_ipv4``: the :class:`Stack`: ``tcp_v4_rcv``, prequeue, backlog, handshake, timers
  and the process-context primitives a reader's ``tcp_recvmsg`` drives.
"""
