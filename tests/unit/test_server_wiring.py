"""How the server wires its parts from the configuration (no sockets opened)."""

from __future__ import annotations

import asyncio

import pytest

from confroom.config import load
from confroom.server import Server
from confroom.sip.core import ByeDone, SipCore


def test_rtp_binds_where_sip_binds_and_sdp_advertises_the_contact_host() -> None:
    # With SIP on every interface, RTP must accept packets on every interface too: a phone on
    # another machine sends its RTP to the address in our SDP, which is not 127.0.0.1.
    cfg = load(env={}, overrides={"sip_host": "0.0.0.0", "advertised_host": "192.0.2.10"})
    server = Server(cfg)
    assert server.engine.host == "0.0.0.0"
    assert cfg.contact_host == "192.0.2.10"  # what Contact and SDP c= carry

    cfg = load(env={}, overrides={"sip_host": "127.0.0.1"})
    assert Server(cfg).engine.host == "127.0.0.1"


def test_sip_flush_is_not_reentrant(monkeypatch: pytest.MonkeyPatch) -> None:
    """An event handler that acts on the core (BYE after an ACK timeout) calls back into
    _flush; a mass of queued events must not nest one level per event (RecursionError)."""
    server = Server(load(env={}))
    loop = asyncio.new_event_loop()
    try:
        server._loop = loop
        server.core = core = SipCore("127.0.0.1", 5060)
        leg = object()
        for _ in range(5000):
            core._events.append(ByeDone(leg, 200))  # type: ignore[arg-type]
        nesting = [0, 0]  # now, worst

        def dispatch(ev: object) -> None:
            nesting[0] += 1
            nesting[1] = max(nesting)
            server._flush()  # what sip_bye() does
            nesting[0] -= 1

        monkeypatch.setattr(server, "_dispatch", dispatch)
        server._flush()
        assert core.next_event() is None  # all 5000 handled
        assert nesting[1] == 1
    finally:
        loop.close()
