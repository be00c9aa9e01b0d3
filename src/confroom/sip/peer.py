"""`Peer`: where a SIP message came from or goes to (transport, host, port)."""

from __future__ import annotations

from typing import NamedTuple


class Peer(NamedTuple):
    transport: str  # "udp" | "tcp" | "tls"
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        """True for stream transports, where SIP does not retransmit."""
        return self.transport != "udp"
