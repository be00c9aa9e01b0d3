"""The recognizer interface, the vendor registry, and `UtteranceDetector`.

A `Recognizer` turns one utterance (8 kHz 16-bit mono samples) into a `Transcript` (jambonz's
`speech` object: alternatives with transcript and confidence, `is_final`, `language_code`).
It is async so that a cloud vendor can be added later; the offline one runs its decoder on a
thread of its own. `recognizer_for(vendor)` picks the implementation: `default` (and any
vendor that is not configured, with one warning per vendor name) is pocketsphinx.

`UtteranceDetector` is sans-IO: fed one frame per tick (or None when nothing arrived), it
answers `STARTED` once speech begins and `ENDED` when it ends, keeping the utterance's samples
(with a short pre-roll) for `take()`. Voice activity comes from webrtcvad (mode 2), a few
microseconds per 20 ms frame, so it can run on the media tick; recognition never does.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
import webrtcvad

from confroom.media.sources import FRAME_SAMPLES, SAMPLE_RATE

log = logging.getLogger("confroom.speech")

Samples = npt.NDArray[np.int16]


@dataclass(frozen=True)
class Alternative:
    transcript: str
    confidence: float


@dataclass(frozen=True)
class Transcript:
    """One final recognition result."""

    alternatives: list[Alternative]
    language_code: str
    vendor: str
    is_final: bool = True

    @property
    def text(self) -> str:
        return self.alternatives[0].transcript if self.alternatives else ""

    def as_payload(self) -> dict[str, Any]:
        """jambonz's `speech` object for a gather actionHook."""
        return {
            "language_code": self.language_code,
            "channel_tag": 1,
            "is_final": self.is_final,
            "alternatives": [
                {"transcript": a.transcript, "confidence": round(a.confidence, 4)}
                for a in self.alternatives
            ],
            "vendor": {"name": self.vendor},
        }


class Recognizer(Protocol):
    """Speech to text for one utterance at a time."""

    vendor: str

    async def recognize(
        self, pcm: Samples, *, language: str, hints: Sequence[str]
    ) -> Transcript | None:
        """The transcript of `pcm` (8 kHz), or None when nothing was recognised. `hints`
        (words or phrases the caller is expected to say) narrow the search where the
        implementation can."""
        ...


_default: Recognizer | None = None
_warned: set[str] = set()


def recognizer_for(vendor: Any) -> Recognizer:
    """The recognizer for a `recognizer.vendor` (see the module docstring)."""
    global _default
    name = vendor if isinstance(vendor, str) and vendor else "default"
    if name != "default" and name not in _warned:
        _warned.add(name)
        log.warning("speech recognizer vendor %r is not configured: using the offline default "
                    "(pocketsphinx)", name)
    if _default is None:
        from confroom.speech.sphinx import SphinxRecognizer

        _default = SphinxRecognizer()
    return _default


# ----------------------------------------------------------------------------- utterances

STARTED: Final = "started"
ENDED: Final = "ended"


@dataclass
class UtteranceDetector:
    """See the module docstring. Times are in frames of 20 ms."""

    start_frames: int = 6  # voiced frames within the last `window` frames to start
    window: int = 10
    end_frames: int = 40  # unvoiced frames in a row that end an utterance (0.8 s)
    preroll_frames: int = 15
    max_frames: int = 750  # 15 s: an utterance this long ends anyway
    _vad: Any = field(default_factory=lambda: webrtcvad.Vad(2))
    _recent: deque[bool] = field(default_factory=deque)
    _pre: deque[Samples] = field(default_factory=deque)
    _frames: list[Samples] = field(default_factory=list)
    _silent_run: int = 0
    _in_speech: bool = False
    _done: list[Samples] = field(default_factory=list)

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    def feed(self, frame: Samples | None) -> str | None:
        """One tick's frame; STARTED, ENDED or None."""
        if frame is None:
            frame = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        voiced = bool(frame.any()) and bool(
            self._vad.is_speech(frame.tobytes(), SAMPLE_RATE)
        )
        if not self._in_speech:
            self._recent.append(voiced)
            self._pre.append(frame)
            if len(self._recent) > self.window:
                self._recent.popleft()
            if len(self._pre) > self.preroll_frames:
                self._pre.popleft()
            if sum(self._recent) >= self.start_frames:
                self._in_speech = True
                self._frames = list(self._pre)
                self._pre.clear()
                self._recent.clear()
                self._silent_run = 0
                return STARTED
            return None
        self._frames.append(frame)
        self._silent_run = 0 if voiced else self._silent_run + 1
        if self._silent_run >= self.end_frames or len(self._frames) >= self.max_frames:
            self._in_speech = False
            self._done.append(np.concatenate(self._frames))
            self._frames = []
            return ENDED
        return None

    def take(self) -> Samples | None:
        """The oldest ended utterance's samples (None if none is waiting)."""
        return self._done.pop(0) if self._done else None
