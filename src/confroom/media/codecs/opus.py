"""Opus (RFC 6716 / RFC 7587) per stream, through ctypes into the system libopus (Debian
`libopus0`).

Mono, 20 ms frames, at 16 kHz on our side (the conference's wideband rate; the RTP clock is
48 kHz whatever the audio rate). The encoder runs in VOIP mode with the configured bitrate,
complexity and in-band FEC (`OpusConfig`). The decoder conceals a lost frame with the next
packet's in-band FEC data when that packet is already here, else with libopus's own PLC.

Sizes: 320 samples per frame, payloads up to `MAX_PAYLOAD` bytes. Errors from libopus (a
malformed packet) raise `OpusError`; the engine counts them and treats the frame as lost."""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Final

import numpy as np
import numpy.typing as npt

from confroom.media.codecs import OpusConfig

__all__ = ["FRAME_SAMPLES", "MAX_PAYLOAD", "OpusDecoder", "OpusEncoder", "OpusError", "available"]

RATE: Final = 16000
FRAME_SAMPLES: Final = RATE // 50
MAX_PAYLOAD: Final = 1275  # the largest Opus frame (RFC 6716 3.2.1)
_APPLICATION_VOIP: Final = 2048
_SET_BITRATE: Final = 4002
_SET_COMPLEXITY: Final = 4010
_SET_INBAND_FEC: Final = 4012
_SET_PACKET_LOSS_PERC: Final = 4014
_SET_SIGNAL: Final = 4024
_SIGNAL_VOICE: Final = 3001


class OpusError(RuntimeError):
    """libopus refused (a malformed packet, or a bad setting)."""


def _load() -> ctypes.CDLL | None:
    for name in (ctypes.util.find_library("opus"), "libopus.so.0"):
        if name:
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
    return None


_lib = _load()


def available() -> bool:
    """True when libopus could be loaded (Opus is then offered and accepted)."""
    return _lib is not None


def _need() -> ctypes.CDLL:
    if _lib is None:
        raise OpusError("libopus not found (install the libopus0 package)")
    return _lib


if _lib is not None:
    _c_int_p = ctypes.POINTER(ctypes.c_int)
    _lib.opus_encoder_create.restype = ctypes.c_void_p
    _lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int, _c_int_p]
    _lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
    _lib.opus_encode.restype = ctypes.c_int32
    _lib.opus_encode.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int32]
    _lib.opus_decoder_create.restype = ctypes.c_void_p
    _lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, _c_int_p]
    _lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    _lib.opus_decode.restype = ctypes.c_int
    _lib.opus_decode.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int,
        ctypes.c_int]
    _lib.opus_strerror.restype = ctypes.c_char_p
    _lib.opus_strerror.argtypes = [ctypes.c_int]
    _lib.opus_encoder_ctl.restype = ctypes.c_int


def _error(code: int) -> str:
    lib = _need()
    text: bytes = lib.opus_strerror(code)
    return text.decode(errors="replace")


class OpusEncoder:
    """One stream's Opus encoder (16 kHz mono in, one packet per 20 ms frame out)."""

    def __init__(self, config: OpusConfig) -> None:
        lib = _need()
        config.validate()
        err = ctypes.c_int(0)
        handle = lib.opus_encoder_create(RATE, 1, _APPLICATION_VOIP, ctypes.byref(err))
        if err.value != 0 or not handle:
            raise OpusError(f"opus_encoder_create: {_error(err.value)}")
        self._handle: int | None = handle
        for request, value in (
            (_SET_BITRATE, config.bitrate),
            (_SET_COMPLEXITY, config.complexity),
            (_SET_INBAND_FEC, int(config.fec)),
            (_SET_PACKET_LOSS_PERC, config.packet_loss_perc if config.fec else 0),
            (_SET_SIGNAL, _SIGNAL_VOICE),
        ):
            rc = lib.opus_encoder_ctl(ctypes.c_void_p(handle), ctypes.c_int(request),
                                      ctypes.c_int(value))
            if rc != 0:
                self.close()
                raise OpusError(f"opus_encoder_ctl({request}, {value}): {_error(rc)}")
        self._out = ctypes.create_string_buffer(MAX_PAYLOAD)
        self._encode = lib.opus_encode

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        if pcm.shape != (FRAME_SAMPLES,):
            raise ValueError(f"Opus frames are {FRAME_SAMPLES} samples, got {pcm.shape}")
        if self._handle is None:
            raise OpusError("encoder closed")
        data = np.ascontiguousarray(pcm, dtype=np.int16)
        n = self._encode(self._handle, data.ctypes.data, FRAME_SAMPLES, self._out, MAX_PAYLOAD)
        if n < 0:
            raise OpusError(f"opus_encode: {_error(n)}")
        return self._out.raw[:n]

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None and _lib is not None:
            _lib.opus_encoder_destroy(handle)

    def __del__(self) -> None:
        self.close()


class OpusDecoder:
    """One stream's Opus decoder (one 20 ms frame of 16 kHz mono per packet, FEC and PLC)."""

    def __init__(self) -> None:
        lib = _need()
        err = ctypes.c_int(0)
        handle = lib.opus_decoder_create(RATE, 1, ctypes.byref(err))
        if err.value != 0 or not handle:
            raise OpusError(f"opus_decoder_create: {_error(err.value)}")
        self._handle: int | None = handle
        self._decode = lib.opus_decode
        # room for the longest packet (120 ms); only 20 ms is returned
        self._pcm = np.zeros(6 * FRAME_SAMPLES, dtype=np.int16)
        self.fec_frames = 0  # lost frames rebuilt from the next packet's FEC data
        self.plc_frames = 0  # lost frames concealed by libopus's PLC

    def _run(self, data: bytes | None, fec: int) -> npt.NDArray[np.int16]:
        if self._handle is None:
            raise OpusError("decoder closed")
        size = FRAME_SAMPLES if data is None or fec else len(self._pcm)
        n = self._decode(self._handle, data, 0 if data is None else len(data),
                         self._pcm.ctypes.data, size, fec)
        if n < 0:
            raise OpusError(f"opus_decode: {_error(n)}")
        out = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        m = min(n, FRAME_SAMPLES)
        out[:m] = self._pcm[:m]
        return out

    def decode(
        self, payload: bytes | None, next_payload: bytes | None = None
    ) -> npt.NDArray[np.int16] | None:
        if payload is not None:
            return self._run(payload, 0)
        if next_payload is not None:
            self.fec_frames += 1
            return self._run(next_payload, 1)
        self.plc_frames += 1
        return self._run(None, 0)

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None and _lib is not None:
            _lib.opus_decoder_destroy(handle)

    def __del__(self) -> None:
        self.close()
