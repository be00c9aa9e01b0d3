"""ConnectionTable (sans-IO): caps, message and idle deadlines, holds, the summary line; the
default caps sized from a descriptor limit."""

from __future__ import annotations

from confroom.connlimits import (
    CLOSED_IDLE,
    CLOSED_SLOW,
    REFUSED_PER_SOURCE,
    REFUSED_TOTAL,
    ConnectionTable,
    Limits,
    default_caps,
)

LIM = Limits(max_total=4, max_per_source=2, message_timeout=10.0, idle_timeout=60.0)


def table(limits: Limits = LIM) -> ConnectionTable[str]:
    return ConnectionTable(limits, "test", summary_interval=10.0)


def open_busy(t: ConnectionTable[str], key: str, source: str, now: float = 0.0) -> str | None:
    """Open a connection that then delivers a message (not waiting for one: never evicted)."""
    refused = t.opened(key, source, now)
    if refused is None:
        t.received(key, now, completed=1, partial=False)
    return refused


def test_caps_per_source_and_in_total_and_closing_frees_a_slot() -> None:
    t = table()
    assert open_busy(t, "a1", "10.0.0.1") is None
    assert open_busy(t, "a2", "10.0.0.1") is None
    assert open_busy(t, "a3", "10.0.0.1") == REFUSED_PER_SOURCE
    assert open_busy(t, "b1", "10.0.0.2") is None
    assert open_busy(t, "c1", "10.0.0.3") is None
    assert open_busy(t, "d1", "10.0.0.4") == REFUSED_TOTAL  # nobody waiting to make room
    assert len(t) == 4 and t.from_source("10.0.0.1") == 2
    assert t.total_refused == 2 and t.take_evicted() == []
    t.closed("a1")
    t.closed("a1")  # twice is harmless
    assert open_busy(t, "a4", "10.0.0.1", 1.0) is None
    assert t.from_source("10.0.0.1") == 2 and len(t) == 4


def test_at_the_total_cap_the_longest_waiting_connection_makes_room() -> None:
    t = table()
    t.opened("silent", "10.0.0.1", 0.0)  # never sends
    t.opened("slow", "10.0.0.2", 1.0)
    t.received("slow", 1.5, completed=1, partial=True)  # a message, then a partial one
    t.opened("busy", "10.0.0.3", 2.0)
    t.received("busy", 2.0, completed=1, partial=False)
    t.opened("held", "10.0.0.4", 0.5)
    t.received("held", 0.5, partial=True)
    t.hold("held")  # held connections are never dropped for room
    assert t.opened("new1", "10.0.0.5", 3.0) is None
    assert t.take_evicted() == ["silent"]
    assert t.opened("new2", "10.0.0.6", 3.0) is None
    assert t.take_evicted() == ["slow"]
    assert t.opened("new3", "10.0.0.7", 3.0) is None  # new1 has not sent anything yet
    assert t.take_evicted() == ["new1"]
    t.received("new2", 3.1, completed=1, partial=False)
    t.received("new3", 3.1, completed=1, partial=False)
    assert t.opened("new4", "10.0.0.8", 4.0) == REFUSED_TOTAL  # busy, held, new2, new3
    assert t.take_evicted() == []
    assert "silent" not in t and t.from_source("10.0.0.1") == 0
    line = t.summary(4.0)
    assert line is not None and "closed 3 waiting for a message to admit new ones" in line
    assert "refused 1 connection(s): 1 over the total cap (4)" in line


def test_connections_we_open_count_but_are_never_refused() -> None:
    t = table()
    for i in range(4):
        assert t.opened(f"in{i}", f"10.0.0.{i}", 0.0) is None
    assert t.opened("out", "192.0.2.1", 0.0, inbound=False) is None
    assert len(t) == 5
    for i in range(4):
        t.received(f"in{i}", 0.0, completed=1, partial=False)
    assert t.opened("in9", "10.0.0.9", 0.0) == REFUSED_TOTAL
    # and they never wait for a first message (we are the client): only the idle deadline
    t.received("in0", 1.0, partial=True)
    assert t.sweep(30.0) == [("in0", CLOSED_SLOW)]
    assert t.sweep(59.0) == []
    assert sorted(t.sweep(60.0)) == [("in1", CLOSED_IDLE), ("in2", CLOSED_IDLE),
                                     ("in3", CLOSED_IDLE), ("out", CLOSED_IDLE)]


def test_first_message_must_complete_within_the_timeout_of_accept() -> None:
    t = table()
    t.opened("quiet", "10.0.0.1", 0.0)
    t.opened("crlf", "10.0.0.2", 0.0)
    t.opened("good", "10.0.0.3", 0.0)
    t.received("crlf", 5.0, partial=False)  # keep-alive CRLFs are not a message
    t.received("good", 9.0, completed=1, partial=False)
    assert t.sweep(9.9) == []
    assert sorted(t.sweep(10.0)) == [("crlf", CLOSED_SLOW), ("quiet", CLOSED_SLOW)]
    assert "good" in t and len(t) == 1
    assert t.sweep(10.0) == []  # reported once


def test_a_message_must_complete_within_the_timeout_of_its_first_byte() -> None:
    t = table()
    t.opened("c", "10.0.0.1", 0.0)
    t.received("c", 1.0, completed=1, partial=False)
    t.received("c", 30.0, partial=True)  # first byte of the next message
    t.received("c", 35.0, partial=True)  # dribbling: still the same message
    assert t.sweep(39.9) == []
    assert t.sweep(40.0) == [("c", CLOSED_SLOW)]
    # a message that completes in time, followed by a partial one, restarts the clock
    t.opened("d", "10.0.0.1", 100.0)
    t.received("d", 101.0, partial=True)
    t.received("d", 108.0, completed=1, partial=True)
    assert t.sweep(117.9) == []
    assert t.sweep(118.0) == [("d", CLOSED_SLOW)]


def test_idle_connections_close_unless_a_call_holds_them() -> None:
    t = table()
    for key in ("idle", "held", "talks"):
        t.opened(key, key, 0.0)
        t.received(key, 1.0, completed=1, partial=False)
    t.hold("held")
    t.hold("held")
    t.sent("talks", 50.0)  # bytes either way count
    assert t.sweep(60.9) == []
    assert t.sweep(61.0) == [("idle", CLOSED_IDLE)]
    t.release("held")
    assert t.sweep(200.0) == [("talks", CLOSED_IDLE)]
    assert t.held("held")
    t.release("held")
    assert not t.held("held")
    assert t.sweep(200.0) == [("held", CLOSED_IDLE)]


def test_release_with_a_time_restarts_the_idle_clock() -> None:
    t = table()
    t.opened("c", "s", 0.0)
    t.received("c", 1.0, completed=1, partial=False)
    t.hold("c")
    assert t.sweep(100.0) == []
    t.release("c", 100.0)
    assert t.sweep(159.0) == []
    assert t.sweep(160.0) == [("c", CLOSED_IDLE)]


def test_holds_are_kept_per_key_across_connections() -> None:
    t = table()
    t.hold("peer")  # a call holds the peer's connection
    t.opened("peer", "s", 0.0)
    t.received("peer", 0.0, completed=1, partial=False)
    assert t.sweep(1000.0) == []


def test_zero_idle_timeout_means_never() -> None:
    t = table(Limits(max_total=4, max_per_source=4, message_timeout=5.0, idle_timeout=0.0))
    t.opened("c", "s", 0.0)
    t.received("c", 1.0, completed=1, partial=False)
    assert t.sweep(1e6) == []


def test_summary_is_one_line_per_interval_with_what_happened() -> None:
    t = table()
    assert t.summary(0.0) is None
    for i in range(3):
        open_busy(t, f"a{i}", "10.0.0.1")
    open_busy(t, "x", "10.0.0.7")
    open_busy(t, "y", "10.0.0.8")
    open_busy(t, "z", "10.0.0.9")
    line = t.summary(0.5)
    assert line is not None
    assert "refused 2 connection(s)" in line
    assert "1 over the per-source cap (2)" in line and "1 over the total cap (4)" in line
    assert "10.0.0.1 x1" in line and "10.0.0.9 x1" in line
    open_busy(t, "w", "10.0.0.9", 1.0)
    assert t.summary(5.0) is None  # within the interval: nothing, the count is kept
    for key in ("a0", "a1", "x", "y"):
        t.received(key, 10.0, partial=True)  # then nothing more: slow
    t.sweep(20.0)
    line = t.summary(20.0)
    assert line is not None
    assert "refused 1 connection(s)" in line and "closed 4 slow" in line
    assert "(open now: 0)" in line
    assert t.summary(40.0) is None  # nothing new


def test_sweep_interval_follows_the_shortest_timeout() -> None:
    assert LIM.sweep_interval == 1.0
    short = Limits(max_total=1, max_per_source=1, message_timeout=1.0, idle_timeout=0.8)
    assert short.sweep_interval == 0.2
    tiny = Limits(max_total=1, max_per_source=1, message_timeout=0.1, idle_timeout=0.0)
    assert tiny.sweep_interval == 0.1


def test_default_caps_leave_most_descriptors_to_rtp() -> None:
    sip_total, sip_src, http_total, http_src = default_caps(1024)
    assert (sip_total, sip_src, http_total, http_src) == (256, 32, 64, 16)
    assert sip_total + http_total <= 1024 // 2
    big = default_caps(1 << 20)
    assert big == (10000, 100, 1000, 32)
    small = default_caps(64)
    assert small[0] >= 16 and small[1] >= 4 and small[2] >= 8
