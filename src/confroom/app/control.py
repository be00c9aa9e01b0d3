"""`CallControl`: what the verb runner may do to a call, and `CallInfo`, what it knows of one.

The call object in `confroom.call` implements `CallControl`; the app layer (session, verbs)
only sees this protocol, so it never touches SIP or sockets directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from confroom.config import AppConfig
from confroom.media.session import MediaSession
from confroom.media.sources import Source


@dataclass
class CallInfo:
    """The facts about a call that hook payloads are built from (spec section 2)."""

    call_sid: str
    call_id: str  # SIP Call-ID
    from_user: str  # user part (or whole URI when there is none) of the From URI
    to_user: str
    caller_name: str
    originating_sip_ip: str
    originating_sip_port: int
    local_sip_address: str  # "host:port" we received the INVITE on
    account_sid: str
    application_sid: str
    direction: str = "inbound"
    call_status: str = "trying"
    sip_status: int = 100
    sip_reason: str = "Trying"
    # the INVITE as {"method", "uri", "headers": {...}, "body": str}
    sip: Mapping[str, Any] = field(default_factory=dict)
    # outbound calls: the create-call `tag` (sent as customerData), the dialling call's sid
    customer_data: Mapping[str, Any] | None = None
    parent_call_sid: str | None = None


class CallControl(Protocol):
    """The operations a running verb list needs from its call."""

    info: CallInfo
    app: AppConfig
    media: MediaSession  # the call's RTP session (what a conference mixes)
    # called with each digit the caller sends (RFC 4733 or SIP INFO) while set (`gather`)
    dtmf_listener: Callable[[str], None] | None

    @property
    def answered(self) -> bool: ...

    @property
    def ended(self) -> bool:
        """True once the call is over (either side hung up, or it failed)."""
        ...

    async def answer(self) -> None:
        """Send 200 OK with our SDP (no-op when already answered); returns once sent."""
        ...

    async def play(self, source: Source) -> bool:
        """Play `source` to the caller until it ends. False if the call ended or playback was
        stopped first. Answers the call first if needed."""
        ...

    def stop_playback(self) -> None:
        """Stop what `play` is playing now (its awaiting caller gets False)."""
        ...

    async def wait_ended(self, timeout: float | None = None) -> bool:
        """Wait until the call ends (True) or `timeout` seconds pass (False)."""
        ...

    async def hangup(self, headers: Mapping[str, str] | None = None) -> None:
        """End the call: BYE when answered, else a final 480 response."""
        ...

    async def decline(
        self, status: int, reason: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        """Reject an unanswered call with a final response (status 400-699)."""
        ...
