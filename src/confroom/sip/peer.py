"""`Peer`: where a SIP message came from or goes to (transport, host, port)."""

from __future__ import annotations

from typing import NamedTuple


class Peer(NamedTuple):
    transport: str  # "udp" | "tcp" | "tls" | "ws" | "wss"
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        """True for stream transports, where SIP does not retransmit."""
        return self.transport != "udp"

    @property
    def websocket(self) -> bool:
        """True for SIP over WebSocket (RFC 7118), plain or secure."""
        return self.transport in ("ws", "wss")
