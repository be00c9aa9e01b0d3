"""Batched RTP I/O for the load generator: one UDP socket, `sendmmsg`/`recvmmsg` via ctypes.

The generator must stay far cheaper than the server it measures. Python's per-datagram
`sendto`/`recvfrom` (or an asyncio protocol callback per packet) costs several µs of
interpreter time per packet; here a whole tick of packets is one numpy header update plus a
handful of `sendmmsg` calls, and the receive side drains up to `batch` datagrams per
`recvmmsg` call and parses them with numpy. Arrival times are the kernel's receive timestamps
(SO_TIMESTAMPNS, CLOCK_REALTIME ns), so they do not depend on when the generator gets to them.

Linux x86-64 only (struct layouts below are the LP64 ones).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["RecvBatch", "RtpSocket", "sockaddr_in"]

_LIBC = ctypes.CDLL(None, use_errno=True)
_sendmmsg = _LIBC.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int
_recvmmsg = _LIBC.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int

_MSG_DONTWAIT = 0x40
_SO_TIMESTAMPNS = 35  # == SCM_TIMESTAMPNS
_SOL_SOCKET = socket.SOL_SOCKET

# struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; } on LP64: 64 bytes.
MMSG = np.dtype(
    [
        ("name", "<u8"),
        ("namelen", "<u4"),
        ("_p0", "<u4"),
        ("iov", "<u8"),
        ("iovlen", "<u8"),
        ("control", "<u8"),
        ("controllen", "<u8"),
        ("flags", "<i4"),
        ("_p1", "<u4"),
        ("len", "<u4"),
        ("_p2", "<u4"),
    ]
)
IOVEC = np.dtype([("base", "<u8"), ("len", "<u8")])
assert MMSG.itemsize == 64 and IOVEC.itemsize == 16

RTP_HEADER = 12
PAYLOAD = 160
PACKET = RTP_HEADER + PAYLOAD
_SLOT = 512  # receive slot per datagram (RTP PCMU is 172 bytes)
_CTRL = 64


def _addr(a: npt.NDArray[np.generic]) -> int:
    return int(a.ctypes.data)


def sockaddr_in(ip: str, port: int) -> bytes:
    """struct sockaddr_in (16 bytes) for an IPv4 address."""
    return (
        socket.AF_INET.to_bytes(2, "little")
        + port.to_bytes(2, "big")
        + socket.inet_aton(ip)
        + bytes(8)
    )


@dataclass(slots=True)
class RecvBatch:
    """Datagrams from one drain, parsed: source port, RTP fields, kernel arrival time."""

    src_port: npt.NDArray[np.int64]
    seq: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    arrival_ns: npt.NDArray[np.int64]
    payload: npt.NDArray[np.uint8]  # (n, 160) view into the receive buffer: copy to keep
    length: npt.NDArray[np.int64]


class RtpSocket:
    """One non-blocking UDP socket that sends a whole tick of packets per call and drains
    everything received with `recvmmsg`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, batch: int = 1024) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        for opt, force, size in ((socket.SO_RCVBUF, 33, 64 << 20), (socket.SO_SNDBUF, 32, 8 << 20)):
            try:  # as root, SO_RCVBUFFORCE/SO_SNDBUFFORCE bypass net.core.[rw]mem_max
                self.sock.setsockopt(_SOL_SOCKET, force, size)
            except OSError:
                self.sock.setsockopt(_SOL_SOCKET, opt, size)
        self.sock.setsockopt(_SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()
        self.fd = self.sock.fileno()
        self.batch = batch
        # receive side
        self._rbuf = np.zeros((batch, _SLOT), dtype=np.uint8)
        self._rname = np.zeros((batch, 16), dtype=np.uint8)
        self._rctrl = np.zeros((batch, _CTRL), dtype=np.uint8)
        self._riov = np.zeros(batch, dtype=IOVEC)
        self._riov["base"] = _addr(self._rbuf) + np.arange(batch, dtype=np.uint64) * _SLOT
        self._riov["len"] = _SLOT
        self._rmsg = np.zeros(batch, dtype=MMSG)
        self._rmsg["name"] = _addr(self._rname) + np.arange(batch, dtype=np.uint64) * 16
        self._rmsg["iov"] = _addr(self._riov) + np.arange(batch, dtype=np.uint64) * 16
        self._rmsg["iovlen"] = 1
        self._rmsg["control"] = _addr(self._rctrl) + np.arange(batch, dtype=np.uint64) * _CTRL
        self._rmsg_ptr = _addr(self._rmsg)
        # send side (set by prepare_send)
        self._pkts = np.zeros((0, PACKET), dtype=np.uint8)
        self._smsg = np.zeros(0, dtype=MMSG)
        self._siov = np.zeros(0, dtype=IOVEC)
        self._sname = np.zeros((0, 16), dtype=np.uint8)
        self.send_errors = 0
        self.send_short = 0

    def close(self) -> None:
        self.sock.close()

    # --- sending ----------------------------------------------------------------------------

    def prepare_send(self, packets: npt.NDArray[np.uint8], dests: list[bytes]) -> None:
        """`packets` (n, 172) is the caller's buffer (rewritten in place every tick);
        `dests[i]` the sockaddr_in of packet i. Call again when destinations change."""
        n = len(dests)
        assert packets.shape == (n, PACKET) and packets.flags.c_contiguous
        self._pkts = packets
        self._sname = np.frombuffer(b"".join(dests), dtype=np.uint8).reshape(n, 16).copy()
        self._siov = np.zeros(n, dtype=IOVEC)
        self._siov["base"] = _addr(packets) + np.arange(n, dtype=np.uint64) * PACKET
        self._siov["len"] = PACKET
        self._smsg = np.zeros(n, dtype=MMSG)
        self._smsg["name"] = _addr(self._sname) + np.arange(n, dtype=np.uint64) * 16
        self._smsg["namelen"] = 16
        self._smsg["iov"] = _addr(self._siov) + np.arange(n, dtype=np.uint64) * 16
        self._smsg["iovlen"] = 1

    def send_rows(self, start: int, stop: int) -> int:
        """Send packets[start:stop]; returns how many the kernel took."""
        base = _addr(self._smsg)
        i = start
        spins = 0
        while i < stop:
            k = min(stop - i, self.batch)
            r = _sendmmsg(self.fd, base + i * 64, k, 0)
            if r < 0:
                e = ctypes.get_errno()
                if e in (errno.EAGAIN, errno.ENOBUFS) and spins < 100:
                    spins += 1
                    time.sleep(0.0002)
                    continue
                if e == errno.ECONNREFUSED:  # an ICMP error from an earlier send: go on
                    continue
                self.send_errors += 1
                i += 1  # skip the packet the kernel refused
                continue
            i += r
        return i - start

    # --- receiving --------------------------------------------------------------------------

    def recv_batch(self) -> RecvBatch | None:
        """One `recvmmsg` (non-blocking); None when nothing is queued."""
        msg = self._rmsg
        msg["namelen"] = 16
        msg["controllen"] = _CTRL
        n = _recvmmsg(self.fd, self._rmsg_ptr, self.batch, _MSG_DONTWAIT, None)
        if n <= 0:
            if n < 0:
                e = ctypes.get_errno()
                if e not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNREFUSED, errno.EINTR):
                    raise OSError(e, os.strerror(e))
            return None
        buf = self._rbuf[:n]
        name = self._rname[:n]
        ctrl = self._rctrl[:n]
        src_port = name[:, 2].astype(np.int64) << 8 | name[:, 3]
        seq = buf[:, 2].astype(np.int64) << 8 | buf[:, 3]
        ts = (
            buf[:, 4].astype(np.int64) << 24
            | buf[:, 5].astype(np.int64) << 16
            | buf[:, 6].astype(np.int64) << 8
            | buf[:, 7]
        )
        c = ctrl[:, :32].copy().view(np.int64)  # cmsg_len, level|type, tv_sec, tv_nsec
        arrival = c[:, 2] * 1_000_000_000 + c[:, 3]
        ok = ctrl[:, 12] == _SO_TIMESTAMPNS
        if not ok.all():
            arrival = np.where(ok, arrival, time.time_ns())
        return RecvBatch(
            src_port,
            seq,
            ts,
            arrival,
            buf[:, RTP_HEADER : RTP_HEADER + PAYLOAD],
            msg["len"][:n].astype(np.int64),
        )
