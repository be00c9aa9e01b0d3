"""Conference recording: where a `record.path` may point, and the incremental WAV writer.

Owns `resolve_record_path` (a path is resolved inside the configured media directory; an
absolute path outside it or a `..` escape is refused with `RecordPathError`) and `MixRecorder`,
which takes one 20 ms frame of the conference mix per media tick and writes it to a 16-bit
mono WAV file at the conference's rate: the first frame decides (8 kHz, or 16 kHz for a
wideband conference); later frames of the other rate are resampled to it. Frames are
batched in a small preallocated buffer and written with one
`writeframes` call per batch, so a recording never accumulates in memory. Ticks the media
clock skipped (it was late) are filled with silence, so the file lasts as long as the
conference did.
"""

from __future__ import annotations

import contextlib
import logging
import wave
from pathlib import Path
from typing import Protocol

import numpy as np

from confroom.media.resample import DOWN_HISTORY, UP_HISTORY, down2, up2
from confroom.media.sources import FRAME_SAMPLES, SAMPLE_RATE, Frame

log = logging.getLogger("confroom.conference")

BATCH_FRAMES = 25  # 0.5 s of audio per write
_MAX_GAP_FRAMES = 50 * 60  # never fill more than a minute of silence at once


class RecordPathError(ValueError):
    """A record path that is empty or would leave the media directory."""


def resolve_record_path(media_dir: Path, path: str) -> Path:
    """`path` (relative to `media_dir`, or absolute but inside it) as an absolute path."""
    if not isinstance(path, str) or not path.strip():
        raise RecordPathError("record.path is empty")
    base = media_dir.resolve()
    candidate = Path(path)
    target = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if target == base or not target.is_relative_to(base):
        raise RecordPathError(
            f"record.path {path!r} resolves to {target}, outside the media directory {base}"
        )
    return target


class FrameWriter(Protocol):
    def writeframes(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class MixRecorder:
    """Writes one frame per tick (see the module docstring). `close()` flushes and finishes
    the file; after a write error the recording stops (logged once) and the rest is dropped."""

    def __init__(self, writer: FrameWriter, path: Path | None = None,
                 period: float = FRAME_SAMPLES / SAMPLE_RATE) -> None:
        self._writer = writer
        # the WAV file whose rate the first frame sets (None: a writer without a header)
        self._wave = writer if isinstance(writer, wave.Wave_write) else None
        self.path = path
        self._period = period
        self._buf = np.zeros((BATCH_FRAMES, FRAME_SAMPLES), dtype=np.int16)
        self.rate: int | None = None  # decided by the first frame (or 8000 at the first write)
        self._up = np.zeros((1, UP_HISTORY), dtype=np.int16)
        self._down = np.zeros((1, DOWN_HISTORY), dtype=np.int16)
        self._pos = 0
        self._t0: float | None = None
        self.frames = 0  # frames accepted so far (written or buffered)
        self.closed = False

    @classmethod
    def open(cls, path: Path) -> MixRecorder:
        """Create the WAV file (and its parent directories). Raises OSError."""
        path.parent.mkdir(parents=True, exist_ok=True)
        w = wave.open(str(path), "wb")  # noqa: SIM115 - closed by close()
        try:
            w.setnchannels(1)
            w.setsampwidth(2)
        except Exception:
            w.close()
            raise
        return cls(w, path)

    @property
    def duration(self) -> float:
        return self.frames * self._period

    def _set_rate(self, rate: int) -> None:
        self.rate = rate
        if self._buf.shape[1] != rate // 50:  # only silence is buffered before the first frame
            self._buf = np.zeros((BATCH_FRAMES, rate // 50), dtype=np.int16)
        if self._wave is not None:
            self._wave.setframerate(rate)

    def _fit(self, frame: Frame) -> Frame:
        """`frame` at the recording's rate (resampled when the conference changed band)."""
        width = self._buf.shape[1]
        if frame.shape[0] == width:
            return frame
        if frame.shape[0] < width:
            up, self._up = up2(frame[None, :], self._up)
            result: Frame = up[0]
            return result
        down, self._down = down2(frame[None, :], self._down)
        result = down[0]
        return result

    def write(self, frame: Frame | None, now: float) -> None:
        """The mix of the tick at `now` (None: silence)."""
        if self.closed:
            return
        if self._t0 is None:
            self._t0 = now
        due = round((now - self._t0) / self._period)  # index of this tick's frame
        for _ in range(min(due - self.frames, _MAX_GAP_FRAMES)):
            self._append(None)
        self._append(frame)

    def _append(self, frame: Frame | None) -> None:
        if frame is not None and self.rate is None:
            self._set_rate(SAMPLE_RATE * frame.shape[0] // FRAME_SAMPLES)
        if frame is None:
            self._buf[self._pos] = 0
        else:
            self._buf[self._pos] = self._fit(frame)
        self._pos += 1
        self.frames += 1
        if self._pos == BATCH_FRAMES:
            self._flush()

    def _flush(self) -> bool:
        """Write the buffered frames; False when that failed (the recording is stopped)."""
        if self._pos == 0 or self.closed:
            return not self.closed
        if self.rate is None:
            self._set_rate(SAMPLE_RATE)
        data = self._buf[: self._pos].astype("<i2", copy=False).tobytes()
        self._pos = 0
        try:
            self._writer.writeframes(data)
        except (OSError, wave.Error) as e:
            log.error("recording %s: write failed, recording stopped: %s", self.path, e)
            self._abort()
            return False
        return True

    def _abort(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError, wave.Error):
            self._writer.close()

    def close(self) -> None:
        if self.rate is None:
            self._set_rate(SAMPLE_RATE)
        if self.closed or not self._flush():
            return
        self.closed = True
        try:
            self._writer.close()
        except (OSError, wave.Error) as e:
            log.error("recording %s: could not finish the file: %s", self.path, e)
