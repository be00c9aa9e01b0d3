"""G.711 tables: ITU properties, agreement with CPython's audioop, batch shapes."""

from __future__ import annotations

import warnings
from types import ModuleType

import numpy as np
import pytest

from confroom.media import g711

ALL_CODES = np.arange(256, dtype=np.uint8)
ALL_PCM = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16)


def _audioop() -> ModuleType | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:
            return None
    return audioop


def test_known_values() -> None:
    assert g711.ULAW_DECODE[0xFF] == 0
    assert g711.ULAW_DECODE[0x7F] == 0
    assert g711.ULAW_DECODE[0x00] == -32124
    assert g711.ULAW_DECODE[0x80] == 32124
    assert g711.ALAW_DECODE[0xD5] == 8
    assert g711.ALAW_DECODE[0x55] == -8
    assert g711.ALAW_DECODE[0xAA] == 32256
    assert g711.ALAW_DECODE[0x2A] == -32256
    assert g711.encode("PCMU", np.array([0], np.int16))[0] == 0xFF
    assert g711.encode("PCMA", np.array([0], np.int16))[0] == 0xD5
    assert g711.encode("PCMU", np.array([32767, -32768], np.int16)).tolist() == [0x80, 0x00]
    assert g711.encode("PCMA", np.array([32767, -32768], np.int16)).tolist() == [0xAA, 0x2A]


def test_table_shapes_and_dtypes() -> None:
    assert g711.ULAW_DECODE.shape == (256,) and g711.ULAW_DECODE.dtype == np.int16
    assert g711.ALAW_DECODE.shape == (256,) and g711.ALAW_DECODE.dtype == np.int16
    assert g711.ULAW_ENCODE.shape == (65536,) and g711.ULAW_ENCODE.dtype == np.uint8
    assert g711.ALAW_ENCODE.shape == (65536,) and g711.ALAW_ENCODE.dtype == np.uint8


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_round_trip_of_every_code(codec: str) -> None:
    back = g711.encode(codec, g711.decode(codec, ALL_CODES))
    if codec == "PCMU":
        # μ-law has two zeros (0xFF = +0, 0x7F = -0); 0 encodes as +0.
        assert back[0x7F] == 0xFF
        back[0x7F] = 0x7F
    np.testing.assert_array_equal(back, ALL_CODES)


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_decode_is_odd_symmetric_and_monotonic(codec: str) -> None:
    values = g711.decode(codec, ALL_CODES).astype(np.int32)
    positives = np.sort(values[values > 0])
    negatives = np.sort(-values[values < 0])
    np.testing.assert_array_equal(positives, negatives)
    assert len(np.unique(positives)) == (128 if codec == "PCMA" else 127)
    # Encoding is monotonic: a larger input never gives a smaller decoded value.
    ordered = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    decoded = g711.decode(codec, g711.encode(codec, ordered)).astype(np.int32)
    assert np.all(np.diff(decoded) >= 0)
    # Quantisation error stays within half a step of the segment (max step 1024 at 16 bits).
    assert np.max(np.abs(decoded - ordered.astype(np.int32))) <= 1024


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_matches_audioop(codec: str) -> None:
    audioop = _audioop()
    assert audioop is not None, "audioop is in the standard library up to Python 3.12"
    to_lin = audioop.ulaw2lin if codec == "PCMU" else audioop.alaw2lin
    to_law = audioop.lin2ulaw if codec == "PCMU" else audioop.lin2alaw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ref_dec = np.frombuffer(to_lin(ALL_CODES.tobytes(), 2), dtype=np.int16)
        ref_enc = np.frombuffer(to_law(ALL_PCM.tobytes(), 2), dtype=np.uint8)
    np.testing.assert_array_equal(g711.decode(codec, ALL_CODES), ref_dec)
    np.testing.assert_array_equal(g711.encode(codec, ALL_PCM), ref_enc)


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_batch_shapes(codec: str) -> None:
    rng = np.random.default_rng(1)
    pcm = rng.integers(-32768, 32768, size=(7, 160), dtype=np.int16)
    codes = g711.encode(codec, pcm)
    assert codes.shape == (7, 160) and codes.dtype == np.uint8
    for i in range(7):
        np.testing.assert_array_equal(codes[i], g711.encode(codec, pcm[i]))
    back = g711.decode(codec, codes)
    assert back.shape == (7, 160) and back.dtype == np.int16
    # Non-contiguous views work too.
    np.testing.assert_array_equal(g711.encode(codec, pcm[:, ::2]), codes[:, ::2])
    assert g711.decode(codec, np.zeros((0, 160), np.uint8)).shape == (0, 160)


def test_unknown_codec() -> None:
    with pytest.raises(ValueError, match="G722"):
        g711.decode("G722", ALL_CODES)
    with pytest.raises(ValueError):
        g711.encode("opus", ALL_PCM)
    assert g711.silence_byte("PCMU") == 0xFF and g711.silence_byte("PCMA") == 0xD5


def test_tables_are_read_only() -> None:
    with pytest.raises(ValueError):
        g711.ULAW_DECODE[0] = 1
