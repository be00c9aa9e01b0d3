"""`WorkerChannel`: SIP messages passed between the `--workers` processes of one machine.

Each worker binds a Unix datagram socket `w<index>.sock` in the supervisor's private
directory. When a worker reads a SIP message that `confroom.sip.ownership.owners` says is
another worker's, it sends the raw bytes there with the address they came from; the owner
handles them exactly as if read from its own SIP socket (admission, rate limits and logs see
the real source) and answers from its own socket, bound to the same shared port, so the peer
sees the same address. A forwarded message is never forwarded again.

Stream connections (TCP, TLS, WebSocket) stay with the worker that accepted them: when the
owner answers a message that reached it from another worker's connection (or later sends a
request of that dialog to that peer), the bytes go back to the worker holding the connection
(`relay`), which writes them on it.

Bounded: a datagram that does not fit in the owner's receive queue is dropped and counted
(UDP retransmissions cover it); an owner that does not answer on its socket (dead, not
restarted yet) makes `divert` return False and the message is handled here (a request of its
lost calls then gets 481). Counters in `stats` (exported in /metrics), warnings rate-limited.

Frame: b"CR", kind (1: a SIP message read from `peer`; 2: send it to `peer`), the sender's
index, `peer`'s port (2 bytes), the lengths of its transport and host (1 byte each), those,
then the SIP message.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Final

from confroom.ratelog import RateLimitedWarning
from confroom.sip.message import SipParseError, parse_message
from confroom.sip.ownership import owners, owners_of_bytes
from confroom.sip.peer import Peer

log = logging.getLogger("confroom.workers")

KIND_RECEIVED: Final = 1
KIND_SEND: Final = 2
_HEAD: Final = struct.Struct("!2sBBHBB")
_MAGIC: Final = b"CR"
_TRANSPORTS: Final = frozenset({"udp", "tcp", "tls", "ws", "wss"})
MAX_FRAME: Final = 65535 + 512
# stream peers whose connection another worker holds (most recently used kept)
MAX_HOLDERS: Final = 10000
_BATCH: Final = 64
# the keys of `WorkerChannel.stats` (the /metrics labels)
EVENTS: Final = ("forwarded", "received", "relayed", "relayed_in", "owner_down", "dropped",
                 "bad_frames")


class FrameError(ValueError):
    pass


def encode_frame(kind: int, sender: int, peer: Peer, data: bytes) -> bytes:
    t = peer.transport.encode()
    h = peer.host.encode()
    return _HEAD.pack(_MAGIC, kind, sender, peer.port, len(t), len(h)) + t + h + data


def decode_frame(frame: bytes) -> tuple[int, int, Peer, bytes]:
    """(kind, sender, peer, SIP message) of a frame; FrameError when it is not one."""
    if len(frame) < _HEAD.size:
        raise FrameError("short frame")
    magic, kind, sender, port, tlen, hlen = _HEAD.unpack_from(frame)
    if magic != _MAGIC or kind not in (KIND_RECEIVED, KIND_SEND):
        raise FrameError("not a worker frame")
    start = _HEAD.size
    end = start + tlen + hlen
    if len(frame) < end:
        raise FrameError("truncated frame")
    transport = frame[start:start + tlen].decode("ascii", "replace")
    if transport not in _TRANSPORTS:
        raise FrameError(f"unknown transport {transport!r}")
    host = frame[start + tlen:end].decode("ascii", "replace")
    return kind, sender, Peer(transport, host, port), frame[end:]


def channel_path(directory: str | Path, index: int) -> Path:
    return Path(directory) / f"w{index}.sock"


class WorkerChannel:
    """Worker `index` of `count`'s end of the channel (see the module docstring).

    `on_received(data, peer)` handles a message another worker read from `peer`;
    `on_send(peer, data)` writes a message on a stream connection this worker holds."""

    def __init__(self, index: int, count: int, directory: str | Path,
                 on_received: Callable[[bytes, Peer], None],
                 on_send: Callable[[Peer, bytes], None]) -> None:
        self.index = index
        self.count = count
        self.directory = Path(directory)
        self.on_received = on_received
        self.on_send = on_send
        self.stats: Counter[str] = Counter({k: 0 for k in EVENTS})
        self._paths = [str(channel_path(directory, i)) for i in range(count)]
        self._holders: OrderedDict[Peer, int] = OrderedDict()
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warn = RateLimitedWarning(log, interval=10.0)

    def start(self) -> None:
        path = Path(self._paths[self.index])
        path.unlink(missing_ok=True)  # left by this worker's previous life
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind(str(path))
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        if self._loop is not None:
            self._loop.remove_reader(sock.fileno())
        sock.close()
        Path(self._paths[self.index]).unlink(missing_ok=True)
        log.info("worker channel: %s", " ".join(f"{k}={v}" for k, v in self.stats.items()))

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    # ---- out ------------------------------------------------------------------------------

    def divert(self, data: bytes, peer: Peer) -> bool:
        """Forward the SIP message `data`, read here from `peer`, to its owner. False: it is
        this worker's to handle (ours, nobody's, unparsable, or its owner cannot be
        reached)."""
        candidates = owners_of_bytes(data, peer, self.index, self.count)
        if candidates is None:
            try:
                candidates = owners(parse_message(data), peer, self.index, self.count)
            except SipParseError:
                return False  # keep-alive or garbage: the core's
        for j in candidates:
            if j == self.index:
                return False
            if self._send(j, KIND_RECEIVED, peer, data):
                self.stats["forwarded"] += 1
                return True
        return False

    def relay(self, peer: Peer, data: bytes) -> bool:
        """Send `data` to stream `peer` through the worker holding its connection, when
        another worker does. False: not known here as another worker's connection."""
        j = self._holders.get(peer)
        if j is None:
            return False
        if self._send(j, KIND_SEND, peer, data):
            self.stats["relayed"] += 1
        return True

    def _send(self, j: int, kind: int, peer: Peer, data: bytes) -> bool:
        """True when the frame was handed to worker j or dropped for lack of room there;
        False when j cannot be reached."""
        sock = self._sock
        if sock is None:
            return False
        try:
            sock.sendto(encode_frame(kind, self.index, peer, data), self._paths[j])
        except (BlockingIOError, InterruptedError):
            self.stats["dropped"] += 1
            self._warn(self._now(), "workers: worker %d's queue is full: SIP message from "
                       "%s:%s dropped", j, peer.host, peer.port)
            return True
        except (ConnectionRefusedError, FileNotFoundError):
            self.stats["owner_down"] += 1
            self._warn(self._now(), "workers: worker %d is not running: SIP message from "
                       "%s:%s handled by worker %d", j, peer.host, peer.port, self.index)
            return False
        except OSError as e:
            self.stats["dropped"] += 1
            self._warn(self._now(), "workers: cannot pass a SIP message to worker %d: %s", j, e)
            return True
        return True

    # ---- in -------------------------------------------------------------------------------

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        for _ in range(_BATCH):
            try:
                frame = sock.recv(MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("worker channel receive error: %s", e)
                return
            try:
                kind, sender, peer, data = decode_frame(frame)
            except FrameError as e:
                self.stats["bad_frames"] += 1
                self._warn(self._now(), "workers: bad frame on the worker channel: %s", e)
                continue
            try:
                if kind == KIND_RECEIVED:
                    self.stats["received"] += 1
                    if peer.reliable and sender != self.index and sender < self.count:
                        self._holders[peer] = sender
                        self._holders.move_to_end(peer)
                        if len(self._holders) > MAX_HOLDERS:
                            self._holders.popitem(last=False)
                    self.on_received(data, peer)
                else:
                    self.stats["relayed_in"] += 1
                    self.on_send(peer, data)
            except Exception:  # one message must never stop the channel
                log.exception("error handling a SIP message passed by worker %d", sender)
