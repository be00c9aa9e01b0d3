"""`MediaSession`: the media state of one call leg, sans-IO.

Owns what the engine needs per call: the negotiated codec and payload types, where to send
(symmetric RTP, vetted by the session's `SourceGuard`), the send/receive permissions derived
from the remote SDP direction, the inbound jitter buffer and DTMF receiver, the outbound RTP
sender state and DTMF send queue, the current audio source and the per-tick frame slots
(`inbound`, `mix_out`: a row of a `FrameTable`, the engine's once the session is added to one),
and its SRTP context when the call negotiated SRTP (`srtp`: every datagram is unprotected in
`on_datagram()` before anything reads it; the engine protects what it sends). A WebRTC
member has `webrtc` (`confroom.media.webrtc`): STUN and DTLS on the same port go there, and
`srtp` is set from DTLS once its handshake completes (nothing is sent or decoded before).
No sockets and no asyncio here: the engine feeds datagrams in with `on_datagram()` and
drives the 20 ms tick.

Codecs: PCMU/PCMA go through the engine's batched table paths; a wideband leg (G.722, Opus)
also has a `WideStream` (`wide`: its decoder, encoder and, for Opus, its packet buffer).
G.722 packets (160 bytes per 20 ms, RTP clock 8000) use the jitter stream like G.711; Opus
packets go to the `WideStream`'s own buffer (its jitter stream's payload type carries bit 7,
which no packet matches, so the engine never batches them). The RTP sender advances by the
codec's RTP time per frame (960 for Opus), as do telephone-events.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from confroom.media import g711
from confroom.media.codecs import CODECS, CodecPolicy, codec_info
from confroom.media.frames import FrameTable
from confroom.media.jitter import JitterBuffer
from confroom.media.latch import SourceGuard, Verdict
from confroom.media.rtp import DtmfReceiver, DtmfSender, RtpSender, parse_rtp
from confroom.media.sources import Frame, Source
from confroom.media.srtp import SrtpContext
from confroom.media.webrtc import WebRtcTransport
from confroom.media.wideband import WideStream

__all__ = ["DIRECTIONS", "MediaSession", "fill_byte"]

DIRECTIONS: Final = ("sendrecv", "sendonly", "recvonly", "inactive")
_CN_PAYLOAD_TYPE: Final = 13  # RFC 3389 comfort noise: a keepalive, never played
_UNBATCHED: Final = 0x80  # jitter stream payload-type bit: never batched (Opus)


def fill_byte(codec: str) -> int:
    """The byte partial jitter frames pad with (G.711 silence; unused for the others)."""
    return g711.silence_byte(codec) if codec in ("PCMU", "PCMA") else 0xFF


class MediaSession:
    """Per-call media state. Created by `MediaEngine.open_session()`; see `update()`."""

    __slots__ = (
        "_codec",
        "_rx_rearm",
        "_timed_out",
        "audio_tap",
        "closed",
        "codec_policy",
        "dtmf",
        "dtmf_digits",
        "dtmf_payload_type",
        "dtmf_tap",
        "dtmf_tx",
        "frame_row",
        "frames",
        "guard",
        "jitter",
        "last_rx",
        "local_port",
        "marker_pending",
        "on_dtmf",
        "on_play_done",
        "on_timeout",
        "receive_expected",
        "remote",
        "remote_direction",
        "sdp_remote",
        "send_enabled",
        "sender",
        "source",
        "srtp",
        "webrtc",
        "wide",
    )

    def __init__(self, local_port: int, now: float = 0.0, jitter_depth: int = 2) -> None:
        self.local_port = local_port
        self.dtmf_payload_type: int | None = None
        self.remote: tuple[str, int] | None = None  # where our RTP goes
        self.sdp_remote: tuple[str, int] | None = None  # the address the last SDP gave
        self.guard = SourceGuard(local_port)  # who may be `remote` (see media/latch.py)
        self.remote_direction = "sendrecv"
        # Nothing is negotiated yet: do not send, do not time out.
        self.send_enabled = False
        self.receive_expected = False
        self.last_rx = now
        self.jitter = JitterBuffer(depth=jitter_depth, fill=g711.ULAW_SILENCE)
        self.dtmf = DtmfReceiver()
        self.dtmf_digits: list[str] = []
        self.sender = RtpSender()
        self.marker_pending = True  # set the RTP marker on the next packet sent
        self.frames = FrameTable()  # a table of its own until an engine adopts the session
        self.frame_row = self.frames.open()
        self._codec = "PCMU"  # until negotiated (FrameTable rows start as PCMU)
        self.wide: WideStream | None = None  # codec state of a wideband leg
        self.codec_policy = CodecPolicy()  # what this leg negotiates (its engine's policy)
        self.payload_type = 0
        self.source: Source | None = None
        self.on_play_done: Callable[[bool], None] | None = None
        self.on_dtmf: Callable[[str], None] | None = None
        # A second listener for received digits (a conference distributing them).
        self.dtmf_tap: Callable[[str], None] | None = None
        # A listener for what the caller says (a speech `gather`): called by the engine once
        # per tick with this tick's inbound frame (None when nothing arrived). None = no cost.
        self.audio_tap: Callable[[Frame | None], None] | None = None
        # Digits to send as RFC 4733 events; None when idle (the tick only looks at this).
        self.dtmf_tx: DtmfSender | None = None
        self.on_timeout: Callable[[], None] | None = None
        # SRTP: set before the first packet (`MediaEngine.set_srtp`); None = plain RTP
        self.srtp: SrtpContext | None = None
        self.webrtc: WebRtcTransport | None = None  # ICE-lite + DTLS-SRTP of a WebRTC member
        self.closed = False
        # Engine-private state (the inactivity timer).
        self._rx_rearm = False
        self._timed_out = False

    # --- negotiation ------------------------------------------------------------------------

    def update(
        self,
        codec: str,
        payload_type: int,
        dtmf_payload_type: int | None,
        remote_host: str | None,
        remote_port: int | None,
        remote_direction: str = "sendrecv",
    ) -> None:
        """Apply a (re-)negotiated SDP answer/offer.

        `remote_direction` is the direction attribute of the *remote* SDP (RFC 3264 semantics,
        from the remote's point of view):
          sendrecv -> we send and expect RTP;
          sendonly -> the remote holds us: we must not send; it may or may not send (music on
                      hold), so no inactivity timeout;
          recvonly -> we send; the remote sends nothing, so no inactivity timeout;
          inactive -> neither.
        A missing/0.0.0.0/:: host or port 0 also disables sending (old-style hold / rejected).
        An address different from the previous SDP's becomes `remote` and re-opens the source
        latch to it; the same address again keeps the latched source (a NATed phone's SDP
        address is not where its RTP comes from).
        """
        codec = codec.upper()
        if codec not in CODECS:
            raise ValueError(f"unsupported codec {codec!r}")
        if remote_direction not in DIRECTIONS:
            raise ValueError(f"unknown SDP direction {remote_direction!r}")
        if codec != self.codec:
            self._set_codec(codec)
        self.payload_type = payload_type
        self.dtmf_payload_type = dtmf_payload_type
        self.remote_direction = remote_direction
        reachable = bool(remote_host) and remote_host not in ("0.0.0.0", "::") and bool(remote_port)
        if reachable:
            assert remote_host is not None and remote_port is not None
            new_remote = (remote_host, remote_port)
            if new_remote != self.sdp_remote:
                self.sdp_remote = new_remote
                self.guard.expect(new_remote)
                if new_remote != self.remote:
                    self.remote = new_remote
                    self.marker_pending = True
        send = reachable and remote_direction in ("sendrecv", "recvonly")
        if send and not self.send_enabled:
            self.marker_pending = True
        self.send_enabled = send
        expect = remote_direction == "sendrecv"
        if expect and not self.receive_expected:
            self._rx_rearm = True  # start the inactivity timer afresh at the next check
        self.receive_expected = expect
        self._timed_out = False

    # --- inbound (called per datagram: keep it lean, no numpy) ------------------------------

    def on_datagram(
        self, data: bytes, addr: tuple[str, int] | tuple[str, int, int, int], now: float
    ) -> bool:
        """Handle one received datagram: audio -> jitter buffer, telephone-event -> digits.
        True when it was RTP of this session from a source the guard accepts (then `addr`
        is where we send from now on); a rejected source's packet is dropped unread."""
        if self.closed:
            return False
        webrtc = self.webrtc
        if webrtc is not None:  # ICE + DTLS share the port (RFC 7983); media waits for DTLS
            if data and data[0] < 128:
                a2 = (addr[0], addr[1])
                webrtc.handle(data, a2, now)
                if self.srtp is None and webrtc.srtp is not None:
                    self.srtp = webrtc.srtp
                    self.remote = self.sdp_remote = webrtc.selected
                    self.guard.expect(webrtc.selected)  # the ICE-checked address latches
                return False
            if self.srtp is None:
                return False
        if self.srtp is not None:
            plain = self.srtp.unprotect(data)
            if plain is None:
                return False  # not authentic (or RTCP): dropped, counted, never decoded
            data = plain
        pkt = parse_rtp(data)
        if pkt is None:
            return False
        pt = pkt.payload_type
        if pt != self.payload_type and pt != self.dtmf_payload_type and pt != _CN_PAYLOAD_TYPE:
            return False  # unknown payload type (or RTCP on a muxed port): not ours
        if len(addr) != 2:
            addr = (addr[0], addr[1])  # IPv6 addresses come as 4-tuples
        if self.guard.check(addr, pkt.ssrc, pkt.seq, pkt.timestamp, now) is Verdict.REJECTED:
            return False
        if pt == self.payload_type:
            wide = self.wide
            if wide is not None and wide.opus_jitter is not None:
                wide.opus_jitter.push(pkt.timestamp, pkt.payload, pkt.ssrc)
            else:
                self.jitter.push(pkt.seq, pkt.timestamp, pkt.payload, pkt.ssrc)
        elif pt == self.dtmf_payload_type:
            digit = self.dtmf.feed(pkt)
            if digit is not None:
                self.dtmf_digits.append(digit)
                if self.on_dtmf is not None:
                    self.on_dtmf(digit)
                if self.dtmf_tap is not None:
                    self.dtmf_tap(digit)
        if addr != self.remote:
            self.remote = addr  # symmetric RTP: answer where it comes from
        self.received(now)
        return True

    def received(self, now: float) -> None:
        """RTP arrived at `now` (the engine reports the packets it batched past
        `on_datagram()` this way): it refreshes the inactivity timer."""
        self.last_rx = now
        self._rx_rearm = False
        self._timed_out = False

    # --- DTMF out -----------------------------------------------------------------------------

    def send_dtmf(self, digit: str) -> bool:
        """Queue `digit` to be sent as an RFC 4733 telephone-event on the next ticks. False
        (nothing queued) when no telephone-event payload type was negotiated, the session is
        closed, or the digit is not a DTMF symbol."""
        if self.dtmf_payload_type is None or self.closed:
            return False
        tx = self.dtmf_tx
        if tx is None:
            tx = DtmfSender()
        if not tx.queue(digit):
            return False
        self.dtmf_tx = tx
        return True

    # --- playback ---------------------------------------------------------------------------

    @property
    def playing(self) -> bool:
        return self.source is not None

    def play(self, source: Source) -> None:
        """Make `source` the current source; a replaced one gets `on_play_done(False)`."""
        old = self.source
        self.source = source
        if old is not None and self.on_play_done is not None:
            self.on_play_done(False)

    def stop(self) -> None:
        """Stop the current source (if any), which gets `on_play_done(False)`."""
        old = self.source
        self.source = None
        if old is not None and self.on_play_done is not None:
            self.on_play_done(False)

    def close(self) -> None:
        """Stop playback and ignore everything from now on (the engine closes the socket)."""
        if self.closed:
            return
        self.stop()
        self.closed = True
        self.send_enabled = False
        self.receive_expected = False
        self.frames.clear(self.frame_row)
        # Drop the callbacks: they point back at the call, and a call that ends should be freed
        # by reference counting, not left as a cycle for the garbage collector (whose full
        # passes stall the media clock in proportion to everything alive).
        self.on_play_done = self.on_dtmf = self.on_timeout = None
        self.dtmf_tap = None
        self.audio_tap = None
        self.wide = None  # a wideband leg's codec state (libopus memory) goes now

    # --- this tick's frames -------------------------------------------------------------------

    @property
    def inbound(self) -> Frame | None:
        """What the caller said this tick (decoded; concealed after a loss), or None. A copy:
        mixers read the whole table instead (`frames.inbound[frame_row]`)."""
        return self.frames.get_inbound(self.frame_row)

    @inbound.setter
    def inbound(self, frame: Frame | None) -> None:
        self.frames.set_inbound(self.frame_row, frame)

    @property
    def mix_out(self) -> Frame | None:
        """The frame to send this tick unless a source plays (a conference mix), or None."""
        return self.frames.get_outbound(self.frame_row)

    @mix_out.setter
    def mix_out(self, frame: Frame | None) -> None:
        self.frames.set_outbound(self.frame_row, frame)

    def adopt_frames(self, table: FrameTable) -> None:
        """Move this session's frame slots to `table` (an engine's), starting empty."""
        alaw = bool(self.frames.alaw[self.frame_row])
        wide = bool(self.frames.wide[self.frame_row])
        self.frames.close(self.frame_row)
        self.frames = table
        self.frame_row = table.open()
        table.alaw[self.frame_row] = alaw
        table.set_wide(self.frame_row, wide)

    # --- the negotiated codec, kept where the engine's array passes read it ------------------

    @property
    def codec(self) -> str:
        """"PCMU", "PCMA", "G722" or "OPUS" (the `FrameTable` row has its alaw/wide flags)."""
        return self._codec

    def _set_codec(self, codec: str) -> None:
        pt = self.payload_type
        info = codec_info(codec)
        self._codec = codec
        self.jitter.reset(fill=fill_byte(codec))
        # G.722 bytes are not G.711 levels: the engine tells the buffer where the pauses are
        self.jitter.bank.pause_hint[self.jitter.index] = -1 if codec in ("PCMU", "PCMA") else 0
        row = self.frame_row
        self.frames.clear(row)  # no concealment from the other codec's audio
        self.frames.alaw[row] = codec == "PCMA"
        self.frames.set_wide(row, info.wideband)
        self.wide = (
            WideStream(codec, self.codec_policy.opus, self.jitter.bank.depth) if info.wideband
            else None
        )
        self.sender.samples_per_packet = info.ts_per_frame
        self.guard.clock_scale = info.rtp_clock // 8000
        self.payload_type = pt  # re-marks the jitter stream (batched or not)

    @property
    def payload_type(self) -> int:
        """The audio payload type, both ways (the session's jitter stream holds it)."""
        pt = self.jitter.payload_type
        return pt & ~_UNBATCHED if pt >= 0 else pt

    @payload_type.setter
    def payload_type(self, pt: int) -> None:
        self.jitter.payload_type = pt | (_UNBATCHED if self._codec == "OPUS" else 0)

    # --- engine hooks -----------------------------------------------------------------------

    def check_timeout(self, now: float, timeout: float) -> bool:
        """True exactly once per silence longer than `timeout` while RTP is expected."""
        if not self.receive_expected or self._timed_out or self.closed:
            return False
        if self._rx_rearm:
            self._rx_rearm = False
            self.last_rx = now
            return False
        if now - self.last_rx > timeout:
            self._timed_out = True
            return True
        return False

    def __repr__(self) -> str:
        return (
            f"<MediaSession port={self.local_port} {self.codec}/{self.payload_type} "
            f"remote={self.remote} dir={self.remote_direction}{' closed' if self.closed else ''}>"
        )
