"""The protocol stack: tcp_hashinfo and every ``struct sock``.

Pure model modules, named after the kernel files that hold the same code:

- ``tcp_ipv4``: :class:`~actors.stack.tcp_ipv4.Stack` (the entrances), the socket table,
  ``tcp_v4_rcv`` / ``tcp_v4_rcv_frame``, ``tcp_add_backlog``, ``tcp_prequeue``,
  ``tcp_v4_do_rcv``, ``tcp_v4_send_reset``, and the dispatch of typed socket operations
  (:mod:`protocol.sockops`).
- ``sock``: ``struct sock`` + ``tcp_sock`` + ``icsk``, and the socket lock:
  ``lock_sock``, ``release_sock``, ``__release_sock``, ``__sk_flush_backlog``,
  ``sk_wait_data``, wakeups, ``sock_graft``.
- ``tcp``: the kernel halves of the socket calls: the copy of ``tcp_recvmsg``
  (``skb_copy_datagram_msg``), ``tcp_cleanup_rbuf``, ``tcp_prequeue_process``,
  setsockopt, close, shutdown, send, ``tcp_get_info``.
- ``tcp_minisocks``: listen, the SYN and SYN-ACK, child sockets, ``inet_csk_accept``.
- ``tcp_input``: ``tcp_rcv_established``, ``tcp_data_queue``, the ofo queue, SACK/DSACK,
  ACK scheduling, memory pruning, autotuning, ``tcp_rcv_state_process``.
- ``tcp_output``: ``tcp_select_window`` and the segments the receiver sends.
- ``tcp_timer``: delayed ACK, SYN/SYN-ACK retransmits, sleepers' timeouts, ``tcp_release_cb``.
- ``skb``: the socket buffer as the stack sees it (sequence range, truesize).
- ``net``: the per-stack context: profile, sysctls, socket table, MIB counters, outputs,
  ``current``, and the protocol hooks lower modules call back through.

``actor`` is the process shell; ``trace_observer`` turns the model's events into trace
records and log lines.
"""
