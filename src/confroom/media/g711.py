"""G.711 μ-law (PCMU) and A-law (PCMA) codecs as numpy lookup tables.

Owns the four tables and the two vectorised entry points. Decoding is one fancy-index into a
256-entry table; encoding is one fancy-index into a 65536-entry table addressed by the 16-bit
sample reinterpreted as unsigned (`pcm.view(np.uint16)`). Both work on arrays of any shape, so a
whole tick's worth of frames, shape (n, 160), is a single call.

The tables follow ITU-T G.711 with the usual 16-bit scaling (μ-law peak ±32124, A-law ±32256).
"""

from __future__ import annotations

from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALAW_DECODE",
    "ALAW_ENCODE",
    "ALAW_SILENCE",
    "ULAW_DECODE",
    "ULAW_ENCODE",
    "ULAW_SILENCE",
    "decode",
    "encode",
    "silence_byte",
]

_T = TypeVar("_T")

ULAW_SILENCE: Final = 0xFF  # μ-law code for 0
ALAW_SILENCE: Final = 0xD5  # A-law code for the smallest positive step (decodes to +8)


def _ulaw_decode_table() -> npt.NDArray[np.int16]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_decode_table() -> npt.NDArray[np.int16]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (a >> 4) & 0x07
    t = (a & 0x0F) << 4
    seg0 = t + 8
    seg_n = (t + 0x108) << np.maximum(segment - 1, 0)
    magnitude = np.where(segment == 0, seg0, seg_n)
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


def _all_int16() -> npt.NDArray[np.int32]:
    """Every int16 value, ordered by its uint16 bit pattern (index i <-> int16 view of i)."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _segment(value: npt.NDArray[np.int32], base_bits: int) -> npt.NDArray[np.int32]:
    """Segment number: how many times `value` doubles past 2**base_bits (0..7)."""
    seg = np.zeros_like(value)
    for s in range(1, 8):
        seg[value >= (1 << (base_bits + s))] = s
    return seg


def _ulaw_encode_table() -> npt.NDArray[np.uint8]:
    # 16-bit -> 14-bit (arithmetic shift), then sign/magnitude plus the 33 bias; magnitudes past
    # the top segment (8159 and up) saturate to the largest code.
    x = _all_int16() >> 2
    negative = x < 0
    magnitude = np.minimum(np.where(negative, -x, x), 8158) + 0x21
    seg = _segment(magnitude, 5)
    mantissa = (magnitude >> (seg + 1)) & 0x0F
    code = (seg << 4) | mantissa
    return (code ^ np.where(negative, 0x7F, 0xFF)).astype(np.uint8)


def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    # 16-bit -> 13-bit; negative values use one's complement magnitude (-x - 1).
    x = _all_int16() >> 3
    negative = x < 0
    magnitude = np.where(negative, -x - 1, x)  # 0..4095
    seg = _segment(magnitude, 4)
    mantissa = np.where(seg == 0, magnitude >> 1, magnitude >> np.maximum(seg, 1)) & 0x0F
    code = (seg << 4) | mantissa
    return (code ^ np.where(negative, 0x55, 0xD5)).astype(np.uint8)


ULAW_DECODE: Final[npt.NDArray[np.int16]] = _ulaw_decode_table()
ALAW_DECODE: Final[npt.NDArray[np.int16]] = _alaw_decode_table()
ULAW_ENCODE: Final[npt.NDArray[np.uint8]] = _ulaw_encode_table()
ALAW_ENCODE: Final[npt.NDArray[np.uint8]] = _alaw_encode_table()
for _table in (ULAW_DECODE, ALAW_DECODE, ULAW_ENCODE, ALAW_ENCODE):
    _table.flags.writeable = False

_DECODERS: Final = {"PCMU": ULAW_DECODE, "PCMA": ALAW_DECODE}
_ENCODERS: Final = {"PCMU": ULAW_ENCODE, "PCMA": ALAW_ENCODE}
_SILENCE: Final = {"PCMU": ULAW_SILENCE, "PCMA": ALAW_SILENCE}


def _lookup(tables: dict[str, _T], codec: str) -> _T:
    try:
        return tables[codec]
    except KeyError:
        raise ValueError(f"unsupported G.711 codec {codec!r} (expected 'PCMU' or 'PCMA')") from None


def decode(codec: str, data: npt.NDArray[np.uint8]) -> npt.NDArray[np.int16]:
    """Decode G.711 codes (any shape, dtype uint8) to 16-bit linear PCM of the same shape."""
    table = _lookup(_DECODERS, codec)
    return table[np.asarray(data, dtype=np.uint8)]


def encode(codec: str, pcm: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """Encode 16-bit linear PCM (any shape) to G.711 codes of the same shape."""
    table = _lookup(_ENCODERS, codec)
    return table[np.asarray(pcm, dtype=np.int16).view(np.uint16)]


def silence_byte(codec: str) -> int:
    """The code that decodes to (near) zero: fills gaps in payloads of this codec."""
    return _lookup(_SILENCE, codec)
