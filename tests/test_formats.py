"""Each formatter in cli/formats.py against the real tool's own layout.

Every expected line below is built from the tool's source, quoted in the comment above it,
so a change to the formatter that drifts from the tool fails here.
"""

from __future__ import annotations

import json

from actors.mib import ALL_NAMES
from actors.stack.net import DROP_REASONS
from cli import formats

SOCK = {
    "state": "ESTAB", "local": "10.0.0.2:5001", "peer": "10.0.0.1:40001",
    "recv_q": 0, "send_q": 0,
    "skmem": {"r": 0, "rb": 131072, "t": 0, "tb": 87040, "f": 0, "w": 0, "o": 0, "bl": 0,
              "d": 0},
    "snd_wscale": 7, "rcv_wscale": 7, "ato_ms": 40.0, "snd_mss": 1448, "rcv_mss": 1448,
    "advmss": 1460, "bytes_received": 4000001, "segs_in": 2844, "data_segs_in": 2843,
    "last_data_recv_ms": 18, "rcv_rtt_ms": 9.465, "rcv_space": 52128,
    "rcv_ssthresh": 255232, "snd_wnd": 65408, "rcv_wnd": 255232,
}


# -- nstat --------------------------------------------------------------------------------


def test_nstat_line_is_dump_kern_db() -> None:
    # iproute2 misc/nstat.c dump_kern_db():
    #     fprintf(fp, "#%s\n", info_source);            info_source is "kernel"
    #     fprintf(fp, "%-32s%-16llu%6.1f\n", n->id, val, n->rate);
    # which prints, for 843801 IpInReceives and no rate daemon:
    real = "IpInReceives" + " " * 20 + "843801" + " " * 10 + "   0.0"
    assert real == "IpInReceives                    843801             0.0"
    assert formats.nstat_lines({"IpInReceives": 843801}) == ["#kernel", real]
    # a 31-character name still gets its one column of padding, a long value its field
    line = formats.nstat_lines({"TcpExtTCPDirectCopyFromPrequeue": 515864})[1]
    assert line == "TcpExtTCPDirectCopyFromPrequeue 515864" + " " * 10 + "   0.0"


def test_nstat_order_zeros_and_useless_numbers() -> None:
    counts = {"TcpExtTCPOFOQueue": 3, "IpInReceives": 9, "TcpInSegs": 9, "TcpCurrEstab": 2}
    names = [line.split()[0] for line in formats.nstat_lines(counts)[1:]]
    # the kernel's order, not sorted: /proc/net/snmp (Ip, Tcp) before /proc/net/netstat
    assert names == ["IpInReceives", "TcpInSegs", "TcpExtTCPOFOQueue"]
    # nstat.c useless_numbers[] ("TcpCurrEstab", ...) are never printed, even with -z
    every = [line.split()[0] for line in formats.nstat_lines(counts, zeros=True)[1:]]
    assert "TcpCurrEstab" not in every
    assert every == [n for n in ALL_NAMES if n != "TcpCurrEstab"]
    # -z: dump_kern_db skips "!dump_zeros && !val && !n->rate"; with -z zeros stay
    assert "TcpExtTCPBacklogDrop" + " " * 12 + "0" + " " * 15 + "   0.0" in \
        formats.nstat_lines({}, zeros=True)


def test_ipext_counters_come_after_tcpext_in_nstat_order() -> None:
    # net/ipv4/proc.c netstat_seq_show prints "TcpExt:" then "IpExt:" (snmp4_ipextstats_list:
    # ... "InTruncatedPkts" ... "InCsumErrors" ...); nstat loads /proc/net/netstat, then
    # snmp6, then /proc/net/snmp, each in front, so it prints Ip, Tcp, TcpExt, IpExt.
    counts = {"IpExtInCsumErrors": 2, "TcpExtTCPOFOQueue": 3, "IpExtInTruncatedPkts": 1,
              "IpInReceives": 9, "IpInHdrErrors": 2, "TcpInSegs": 6}
    names = [line.split()[0] for line in formats.nstat_lines(counts)[1:]]
    assert names == ["IpInReceives", "IpInHdrErrors", "TcpInSegs", "TcpExtTCPOFOQueue",
                     "IpExtInTruncatedPkts", "IpExtInCsumErrors"]
    assert "IpInCsumErrors" not in ALL_NAMES and "IpInTruncatedPkts" not in ALL_NAMES


def test_nstat_order_is_proc_net_netstat() -> None:
    # net/ipv4/proc.c snmp4_net_list[]: ... "PAWSEstab", "DelayedACKs",
    # "DelayedACKLocked", "DelayedACKLost", "ListenOverflows", "ListenDrops", (4.13:)
    # "TCPPrequeued", ... "TCPHPHits", "TCPHPHitsToUser", "TCPPureAcks", "TCPHPAcks" ...
    # "TCPRcvCollapsed", "TCPBacklogCoalesce", "TCPDSACKOldSent" ... "TCPBacklogDrop" ...
    # "TCPRcvCoalesce", "TCPOFOQueue", "TCPOFODrop", "TCPOFOMerge"
    order = [n for n in ALL_NAMES if n.startswith("TcpExt")]
    expected = ["PAWSEstab", "DelayedACKs", "DelayedACKLocked", "DelayedACKLost",
                "ListenOverflows", "ListenDrops", "TCPPrequeued", "TCPHPHits",
                "TCPHPHitsToUser", "TCPPureAcks", "TCPHPAcks", "TCPRcvCollapsed",
                "TCPBacklogCoalesce", "TCPDSACKOldSent", "TCPBacklogDrop", "TCPRcvCoalesce",
                "TCPOFOQueue", "TCPOFODrop", "TCPOFOMerge"]
    positions = [order.index("TcpExt" + n) for n in expected]
    assert positions == sorted(positions)


def test_nstat_json_is_json_writer() -> None:
    # nstat -j: open_json_object(NULL); open_json_object(info_source); one
    # print_u64 per counter: compact, {"kernel":{...}}, insertion order
    counts = {"TcpInSegs": 9, "IpInReceives": 9}
    assert formats.nstat_json(counts) == '{"kernel":{"IpInReceives":9,"TcpInSegs":9}}'
    # -p: json_writer's pretty mode, four spaces per level and "name": value
    assert formats.nstat_json(counts, pretty=True) == (
        '{\n    "kernel": {\n        "IpInReceives": 9,\n        "TcpInSegs": 9\n    }\n}')
    assert list(json.loads(formats.nstat_json({}, zeros=True))["kernel"])[:2] == \
        ["IpInReceives", "IpInHdrErrors"]


# -- ss -tmi ------------------------------------------------------------------------------


def test_skmem_has_all_nine_fields() -> None:
    # iproute2 misc/ss.c print_skmeminfo():
    #     out(" skmem:(r%u,rb%u,t%u,tb%u,f%u,w%u,o%u", ...); out(",bl%u", ...);
    #     out(",d%u", ...); out(")");
    assert formats.skmem(SOCK["skmem"]) == "skmem:(r0,rb131072,t0,tb87040,f0,w0,o0,bl0,d0)"


def test_ss_info_names_and_order_are_tcp_stats_print() -> None:
    # misc/ss.c tcp_stats_print(), in order: " wscale:%d,%d", " ato:%g", " mss:%d",
    # " rcvmss:%d", " advmss:%d", " bytes_received:%llu", " segs_in:%u",
    # " data_segs_in:%u", " lastrcv:%u", " rcv_rtt:%g", " rcv_space:%d",
    # " rcv_ssthresh:%u", " snd_wnd:%u", " rcv_wnd:%u"; tcp_show_info prints skmem first
    # and inet_show_sock starts the line with out("\n\t").
    assert formats.ss_info(SOCK) == (
        "\t skmem:(r0,rb131072,t0,tb87040,f0,w0,o0,bl0,d0) wscale:7,7 ato:40 mss:1448 "
        "rcvmss:1448 advmss:1460 bytes_received:4000001 segs_in:2844 data_segs_in:2843 "
        "lastrcv:18 rcv_rtt:9.465 rcv_space:52128 rcv_ssthresh:255232 snd_wnd:65408 "
        "rcv_wnd:255232")
    # every field is printed only if non-zero ("if (s->rcv_rtt) out(...)")
    quiet = dict(SOCK, rcv_rtt_ms=0.0, last_data_recv_ms=0)
    assert " rcv_rtt:" not in formats.ss_info(quiet) and "lastrcv" not in formats.ss_info(quiet)


def test_ss_table_is_render_without_a_terminal() -> None:
    # misc/ss.c columns[]: State (left), Recv-Q/Send-Q (left, " " delimiter, "%-6d"),
    # "Local Address:" and "Peer Address:" right-aligned, "Port" left, "Process";
    # render_calc_width() off a terminal: width = longest field + delimiter.
    lines = formats.ss_lines([SOCK, dict(SOCK, state="CLOSE-WAIT", recv_q=1,
                                         peer="10.0.0.1:40002")])
    assert lines[0] == "State      Recv-Q Send-Q Local Address:Port Peer Address:Port Process"
    assert lines[1] == "ESTAB      0      0           10.0.0.2:5001     10.0.0.1:40001"
    assert lines[2].startswith("\t skmem:(r0,rb131072,")
    assert lines[3] == "CLOSE-WAIT 1      0           10.0.0.2:5001     10.0.0.1:40002"
    assert len(lines) == 5


# -- ethtool -S and softnet_stat --------------------------------------------------------


def test_ethtool_is_do_gstats() -> None:
    # ethtool.c do_gstats(): fprintf(stdout, "%s statistics:\n", name) with "NIC", then
    # fprintf(stdout, "     %.*s: %llu\n", ETH_GSTRING_LEN, name, value) for each,
    # zeros included
    assert formats.ethtool_lines({"rx_packets": 5661, "rx_missed_errors": 0}) == [
        "NIC statistics:", "     rx_packets: 5661", "     rx_missed_errors: 0"]


def test_softnet_is_softnet_seq_show() -> None:
    # net/core/net-procfs.c softnet_seq_show(): "%08x %08x %08x ..." of processed,
    # dropped, time_squeeze, 0, 0, 0, 0, 0 (was fastroute), 0 (was cpu_collision),
    # received_rps, flow_limit_count (4.13 stops here; 6.x adds four more)
    row = [2845, 0, 536] + [0] * 8
    assert formats.softnet_lines({"cpu0": row}) == [
        "00000b1d 00000000 00000218 00000000 00000000 00000000 00000000 00000000 "
        "00000000 00000000 00000000"]
    table = formats.softnet_decoded({"cpu0": row, "cpu1": [7, 1, 0] + [0] * 8})
    assert table[0].split() == ["cpu", "processed", "dropped", "time_squeeze",
                                "cpu_collision", "received_rps", "flow_limit_count"]
    assert table[1].split() == ["cpu0", "2845", "0", "536", "0", "0", "0"]
    assert table[2].split() == ["cpu1", "7", "1", "0", "0", "0", "0"]


# -- drop reasons -----------------------------------------------------------------------


def test_drop_lines_one_shape() -> None:
    lines = formats.drop_lines({"TCP_OLD_DATA": 55, "TCP_CSUM": 14, "TCP_ZEROWINDOW": 3},
                               "legacy")
    assert [line.split() for line in lines] == [
        ["SKB_DROP_REASON_TCP_OLD_DATA", "55", "TcpExtDelayedACKLost"],
        ["SKB_DROP_REASON_TCP_CSUM", "14", "TcpInCsumErrors"],
        # 4.13 has no TCPZeroWindowDrop: the drop moves no counter there
        ["SKB_DROP_REASON_TCP_ZEROWINDOW", "3", "-"]]
    # names left-aligned, counts right-aligned, two spaces between columns
    assert lines[1] == "SKB_DROP_REASON_TCP_CSUM" + " " * 8 + "14  TcpInCsumErrors"
    modern = formats.drop_lines({"TCP_ZEROWINDOW": 3}, "modern")
    assert modern[0].split()[2] == "TcpExtTCPZeroWindowDrop"


def test_drop_reason_counters_are_the_drop_sites_mibs() -> None:
    # 6.18 tcp_data_queue(): reason = SKB_DROP_REASON_TCP_OLD_DATA;
    #     NET_INC_STATS(sock_net(sk), LINUX_MIB_DELAYEDACKLOST);
    # dropreason-core.h: TCP_OLD_DATA "see LINUX_MIB_DELAYEDACKLOST",
    # TCP_ZEROWINDOW "see LINUX_MIB_TCPZEROWINDOWDROP", TCP_OFOMERGE "corresponding to
    # LINUX_MIB_TCPOFOMERGE", TCP_INVALID_SEQUENCE / _END_SEQUENCE "Corresponds to
    # LINUX_MIB_BEYOND_WINDOW", TCP_RFC7323_PAWS "LINUX_MIB_PAWSESTABREJECTED",
    # TCP_RFC7323_PAWS_ACK "LINUX_MIB_PAWS_OLD_ACK", SOCKET_BACKLOG "see
    # LINUX_MIB_TCPBACKLOGDROP"; PROTO_MEM names none, but tcp_data_queue moves
    # LINUX_MIB_TCPRCVQDROP and tcp_data_queue_ofo LINUX_MIB_TCPOFODROP with it;
    # TCP_OLD_SEQUENCE names none (tcp_send_dupack counts DelayedACKLost only for data).
    assert DROP_REASONS["TCP_OLD_DATA"] == ("TcpExtDelayedACKLost",)
    assert DROP_REASONS["TCP_ZEROWINDOW"] == ("TcpExtTCPZeroWindowDrop",)
    assert DROP_REASONS["TCP_OFOMERGE"] == ("TcpExtTCPOFOMerge",)
    assert DROP_REASONS["TCP_INVALID_SEQUENCE"] == ("TcpExtBeyondWindow",)
    assert DROP_REASONS["TCP_INVALID_END_SEQUENCE"] == ("TcpExtBeyondWindow",)
    assert DROP_REASONS["TCP_RFC7323_PAWS"] == ("TcpExtPAWSEstab",)
    assert DROP_REASONS["TCP_RFC7323_PAWS_ACK"] == ("TcpExtPAWSOldAck",)
    assert DROP_REASONS["SOCKET_BACKLOG"] == ("TcpExtTCPBacklogDrop",)
    assert DROP_REASONS["PROTO_MEM"] == ("TcpExtTCPRcvQDrop", "TcpExtTCPOFODrop")
    assert DROP_REASONS["TCP_OLD_SEQUENCE"] == ()
    assert all(c in ALL_NAMES for cs in DROP_REASONS.values() for c in cs)


def test_drop_lines_name_both_counters_of_a_shared_reason() -> None:
    # PROTO_MEM's two sites move different counters; 4.13 has only TCPOFODrop of them
    assert formats.drop_lines({"PROTO_MEM": 4}, "modern")[0].split() == [
        "SKB_DROP_REASON_PROTO_MEM", "4", "TcpExtTCPRcvQDrop,TcpExtTCPOFODrop"]
    assert formats.drop_lines({"PROTO_MEM": 4}, "legacy")[0].split() == [
        "SKB_DROP_REASON_PROTO_MEM", "4", "TcpExtTCPOFODrop"]
    # an older run's name reads as 6.18's
    assert formats.drop_lines({"TCP_BACKLOG": 2}, "modern")[0].split() == [
        "SKB_DROP_REASON_SOCKET_BACKLOG", "2", "TcpExtTCPBacklogDrop"]


def test_plain_counters_keep_integers_only() -> None:
    role = {"backlog_enqueued": 4471, "lock_waits": 3, "sockets": [], "drops": {},
            "attached": True}
    assert formats.plain_counters(role) == {"backlog_enqueued": 4471, "lock_waits": 3}
    assert formats.counter_lines({"backlog_enqueued": 4471, "lock_waits": 3}) == [
        "backlog_enqueued  4471", "lock_waits           3"]


def test_stopped_after_counts_from_the_traffic_start() -> None:
    s = {"reason": "complete", "elapsed_s": 8.466, "transfer_s": 6.583, "startup_s": 1.586}
    assert formats.stopped_after(s) == "complete after 6.583 s (start-up 1.586 s)"
    # An older run's summary has only the time since the spawn.
    assert formats.stopped_after({"reason": "duration", "elapsed_s": 3.0}) == \
        "duration after 3.0 s"
