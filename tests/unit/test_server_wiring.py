"""How the server wires its parts from the configuration (no sockets opened)."""

from __future__ import annotations

from confroom.config import load
from confroom.server import Server


def test_rtp_binds_where_sip_binds_and_sdp_advertises_the_contact_host() -> None:
    # With SIP on every interface, RTP must accept packets on every interface too: a phone on
    # another machine sends its RTP to the address in our SDP, which is not 127.0.0.1.
    cfg = load(env={}, overrides={"sip_host": "0.0.0.0", "advertised_host": "192.0.2.10"})
    server = Server(cfg)
    assert server.engine.host == "0.0.0.0"
    assert cfg.contact_host == "192.0.2.10"  # what Contact and SDP c= carry

    cfg = load(env={}, overrides={"sip_host": "127.0.0.1"})
    assert Server(cfg).engine.host == "127.0.0.1"
