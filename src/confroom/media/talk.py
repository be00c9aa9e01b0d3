"""Talking detection for conference members: speech-aware, with start/stop hysteresis.

Owns `TalkDetector`, which turns each tick's inbound frames into "member started talking" /
"member stopped talking" events (what jambonz reports as `start-talking` / `stop-talking`).

A frame counts as *speech* only if it passes, in order (cheapest and most selective first):

1. an energy gate: RMS level above `min_dbfs` (one vectorised pass over all K frames; silent
   members cost nothing beyond it);
2. two spectral features, computed in one batched FFT for the frames that passed the gate
   (300-3400 Hz band, Hann window):
   * spectral flatness (geometric / arithmetic mean of the power spectrum). White noise
     scores ~0.45-0.65 per 20 ms frame, voiced speech ~0.001-0.1 (95th percentile ~0.3 on
     espeak-ng voices). Frames with flatness >= `max_flatness` are not speech. This is the
     feature that rejects broadband noise, which webrtcvad alone calls speech (50% of frames
     of white noise at -30 dBFS and 100% at -20 dBFS in mode 3);
   * tonality: fraction of the band's power within +-2 bins (+-100 Hz) of the strongest bin.
     A pure tone scores > 0.999, speech at most ~0.97. Frames with tonality >=
     `max_tonality` are not speech (webrtcvad calls a 1 kHz tone speech);
   * dual tone (only for frames that passed flatness and tonality): the two strongest
     peaks (+-2 bins each) hold >= 90% of the band's power, one in the DTMF low group
     (697-941 Hz) and one in the high group (1209-1633 Hz): in-band DTMF, not speech
     (webrtcvad calls it speech);
3. webrtcvad (per-member instance, since the VAD adapts to its input), called only for the
   frames that passed 1 and 2, so stationary white noise and tones cost no Python per member.

Frames that passed flatness and tonality also keep their unit-norm amplitude spectrum per
member; a frame's *similarity* is the cosine between its spectrum and the member's spectrum
three analysed frames (60 ms) earlier. Speech changes within tens of ms (espeak-ng: median
0.64), music holds notes and chords (median ~0.96).

Hysteresis (`now` is the tick time in seconds, passed in; no clock here): a member starts
talking once a run of speech frames adds up to `start_ms` (10 frames by default) and the run's
mean flatness is below `max_run_flatness` (rejects loud pink/coloured noise, whose individual
frames can pass; each frame counts with the larger of its flatness and its flatness after a
+6 dB/octave tilt, which makes brown noise look white), the run's mean similarity (from its
4th frame: the first ones compare with frames before the run) is below `max_run_similarity`,
and so is the member's recent similarity (an exponential average over its speech frames, ~0.4 s
memory: a run that starts at a chord change inside music is still rejected).
Gaps of up to `max_gap_ms` (120 ms) of non-speech or missing frames between
speech frames do not break a run (they do not count towards it either): speech has stop
closures and word gaps of 60-120 ms, and with a one-frame tolerance espeak-ng speech took up
to 0.7 s (2 s when quiet) to start. A member stops once no speech frame has been seen for
`stop_ms` (hang-over); members that stop sending frames altogether are stopped the same way.

For talk-gated mixing `open_mask` says whose gate is open: talking, or within a hang time
of the last frame that was speech or at least `loud_dbfs` loud.

State lives in numpy arrays indexed by member id (small stable ints), grown by doubling.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt
import webrtcvad

from confroom.media.sources import FRAME_SAMPLES, SAMPLE_RATE

__all__ = ["TalkDetector"]

FRAME_S: Final = FRAME_SAMPLES / SAMPLE_RATE  # 0.02
_EPS: Final = 1e-6

# Analysis band 300-3400 Hz (telephony band, so band-limited inbound noise still looks flat).
_BIN_HZ: Final = SAMPLE_RATE / FRAME_SAMPLES  # 50 Hz per rfft bin
_BAND_LO: Final = round(300 / _BIN_HZ)  # bin 6
_BAND_HI: Final = round(3400 / _BIN_HZ) + 1  # bins 6..68 inclusive
_TONE_HALF_WIDTH: Final = 2  # bins either side of the peak counted as "the tone"
_TONE_OFFSETS: Final = np.arange(-_TONE_HALF_WIDTH, _TONE_HALF_WIDTH + 1)
# DTMF groups (697-941 Hz and 1209-1633 Hz) as band-relative bin ranges, one bin of slack
_DTMF_LOW: Final = (round(697 / _BIN_HZ) - 1 - _BAND_LO, round(941 / _BIN_HZ) + 1 - _BAND_LO)
_DTMF_HIGH: Final = (round(1209 / _BIN_HZ) - 1 - _BAND_LO, round(1633 / _BIN_HZ) + 1 - _BAND_LO)
DUAL_TONE_SHARE: Final = 0.90
# +6 dB/octave power weighting (f^2, normalised at 1 kHz): a 1/f^2 (brown) spectrum comes out
# flat, speech keeps its harmonic peaks and valleys
_TILT: Final = ((np.arange(_BAND_LO, _BAND_HI) * _BIN_HZ / 1000.0) ** 2).astype(np.float32)
_TILT_GEO: Final = np.float32(np.exp(np.log(_TILT).mean()))
_SIMILARITY_LAG: Final = 3  # frames: spectra compared 60 ms apart
_WINDOW: Final = np.hanning(FRAME_SAMPLES).astype(np.float32)

DEFAULT_MAX_FLATNESS: Final = 0.40
DEFAULT_MAX_TONALITY: Final = 0.985
DEFAULT_MAX_RUN_FLATNESS: Final = 0.27
DEFAULT_MAX_RUN_SIMILARITY: Final = 0.82
_RECENT_START: Final = 0.8  # a new member's recent similarity: between speech and music
_RECENT_WEIGHT: Final = 0.05  # per speech frame: about a 0.4 s memory


def spectral_features(
    frames: npt.NDArray[np.int16],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(flatness, tonality) for each row of a (K, 160) int16 array, both in [0, 1]."""
    f = analyse(frames)
    return f.flatness, f.tonality


class Features(NamedTuple):
    """Per-frame spectral features of K frames (see the module docstring)."""

    flatness: npt.NDArray[np.float32]
    tilted_flatness: npt.NDArray[np.float32]  # of the power x f^2 (brown noise looks white)
    tonality: npt.NDArray[np.float32]
    power: npt.NDArray[np.float32]  # (K, bins) band power spectrum
    peak: npt.NDArray[np.intp]  # strongest bin
    total: npt.NDArray[np.float32]  # band power


def analyse(frames: npt.NDArray[np.int16]) -> Features:
    """Spectral features of each row of a (K, 160) int16 array (one batched FFT)."""
    x = frames.astype(np.float32)
    x *= _WINDOW
    spec = np.fft.rfft(x, axis=1)[:, _BAND_LO:_BAND_HI]
    re = spec.real * spec.real
    re += spec.imag * spec.imag
    power: npt.NDArray[np.float32] = re.astype(np.float32, copy=False)
    power += np.float32(1e-3)  # floor: keeps log finite on digital silence
    width = power.shape[1]
    total = power.sum(axis=1)
    geo = np.exp(np.log(power).mean(axis=1))
    flatness = (geo * np.float32(width) / total).astype(np.float32)
    # the tilted spectrum's geometric mean is geo x a constant: no second log
    tilted_flatness = (geo * _TILT_GEO * np.float32(width) / (power @ _TILT)).astype(np.float32)

    peak = np.argmax(power, axis=1)
    near = np.clip(peak[:, None] + _TONE_OFFSETS[None, :], 0, width - 1)
    inside = (peak[:, None] + _TONE_OFFSETS[None, :] >= 0) & (
        peak[:, None] + _TONE_OFFSETS[None, :] < width
    )
    around = np.where(inside, np.take_along_axis(power, near, axis=1), np.float32(0.0))
    tonality = (around.sum(axis=1) / total).astype(np.float32)
    return Features(flatness, tilted_flatness, tonality, power, peak, total)


def dual_tone_and_shape(
    feats: Features, rows: npt.NDArray[np.intp]
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float32]]:
    """For the given rows of `feats`: whether the frame is DTMF-like (two tones, one in each
    DTMF group, own `DUAL_TONE_SHARE` of the band power) and its unit-norm amplitude spectrum
    (for the similarity of frames 60 ms apart)."""
    power = feats.power[rows]
    total = feats.total[rows]
    peak = feats.peak[rows]
    width = power.shape[1]
    first_bins = np.clip(peak[:, None] + _TONE_OFFSETS[None, :], 0, width - 1)
    rest = power.copy()
    np.put_along_axis(rest, first_bins, np.float32(0.0), axis=1)
    peak2 = np.argmax(rest, axis=1)
    second_bins = np.clip(peak2[:, None] + _TONE_OFFSETS[None, :], 0, width - 1)
    first = total - rest.sum(axis=1)  # the zeroed bins: the first tone's power
    second = np.take_along_axis(rest, second_bins, axis=1)
    second_sum = second.sum(axis=1) - _repeats(second_bins, second)
    lo = np.minimum(peak, peak2)
    hi = np.maximum(peak, peak2)
    dual = (
        ((first + second_sum) >= np.float32(DUAL_TONE_SHARE) * total)
        & (lo >= _DTMF_LOW[0]) & (lo <= _DTMF_LOW[1])
        & (hi >= _DTMF_HIGH[0]) & (hi <= _DTMF_HIGH[1])
    )
    amp = np.sqrt(power)
    amp /= np.sqrt(np.einsum("ij,ij->i", amp, amp))[:, None]
    return dual, amp


def _repeats(
    bins: npt.NDArray[np.intp], values: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Sum of the values at repeated (clipped) indices of each row, to subtract once."""
    dup = np.zeros(values.shape, dtype=np.bool_)
    dup[:, 1:] = bins[:, 1:] == bins[:, :-1]
    out: npt.NDArray[np.float32] = np.where(dup, values, np.float32(0.0)).sum(axis=1)
    return out


class TalkDetector:
    """Start/stop-talking events for many members, one batched `update` per tick."""

    def __init__(
        self,
        capacity: int = 64,
        *,
        start_ms: int = 200,
        stop_ms: int = 800,
        vad_mode: int = 3,
        min_dbfs: float = -45.0,
        max_gap_ms: int = 120,
        max_flatness: float = DEFAULT_MAX_FLATNESS,
        max_tonality: float = DEFAULT_MAX_TONALITY,
        max_run_flatness: float = DEFAULT_MAX_RUN_FLATNESS,
        max_run_similarity: float = DEFAULT_MAX_RUN_SIMILARITY,
        floor_margin_db: float = 6.0,
        floor_rise_db: float = 0.2,
        loud_dbfs: float = -35.0,
    ) -> None:
        if not 0 <= vad_mode <= 3:
            raise ValueError("vad_mode must be 0..3")
        capacity = max(1, int(capacity))
        self._vad_mode = vad_mode
        self._stop_s = stop_ms / 1000.0
        # A speech frame continues the current run if at most `max_gap_ms` of non-speech (or
        # missing) frames separate it from the previous speech frame.
        self._gap_s = max_gap_ms / 1000.0 + FRAME_S + FRAME_S / 2
        # Number of speech frames needed in a run to start talking.
        self._start_frames = max(1, math.ceil(start_ms / 1000.0 / FRAME_S - _EPS))
        # RMS threshold, as mean square of int16 samples (dBFS relative to 32768 RMS).
        self._min_ms = float((32768.0 * 10.0 ** (min_dbfs / 20.0)) ** 2)
        self._max_flatness = float(max_flatness)
        self._max_tonality = float(max_tonality)
        self._max_run_flatness = float(max_run_flatness)
        self._max_run_similarity = float(max_run_similarity)
        # each member's recent similarity (exponential average over its speech frames)
        self._recent_similarity = np.full(capacity, _RECENT_START, dtype=np.float32)
        self._bins = _BAND_HI - _BAND_LO
        # each member's last analysed spectrum shape (unit norm) and its run's similarity sum
        self._prev_shape = np.zeros((capacity, _SIMILARITY_LAG, self._bins), dtype=np.float32)
        self._run_similarity = np.zeros(capacity, dtype=np.float32)
        self._talking = np.zeros(capacity, dtype=np.bool_)
        # for the mix gate (`open_mask`): each member's last "active" frame (a speech frame
        # or one at least `loud_dbfs` loud) and the mean square of the frames last classified
        self._loud_ms = float((32768.0 * 10.0 ** (loud_dbfs / 20.0)) ** 2)
        self._last_active = np.full(capacity, -math.inf, dtype=np.float64)
        self._mean_square = np.zeros(0, dtype=np.float64)
        self._last_speech = np.full(capacity, -math.inf, dtype=np.float64)
        self._run_frames = np.zeros(capacity, dtype=np.int32)
        self._run_flatness = np.zeros(capacity, dtype=np.float32)  # sum over the run
        self._vads: list[webrtcvad.Vad | None] = [None] * capacity
        # Adaptive gate: each member's noise floor (mean square) follows its quietest frames
        # at once and rises slowly through louder ones, so a steady sound (hum, a tone,
        # constant noise) soon sits below floor + margin and costs no spectral analysis,
        # while speech, which dips between words, keeps pulling the floor back down.
        self._floor_ms = np.full(capacity, self._min_ms, dtype=np.float64)
        self._floor_rise = float(10.0 ** (floor_rise_db / 10.0))
        self._floor_margin = float(10.0 ** (floor_margin_db / 10.0))
        # Counters for observability/benchmarks: frames that reached each stage last update.
        self.last_gated = 0
        self.last_vad_calls = 0

    # --- state management ------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return int(self._talking.shape[0])

    def _grow(self, needed: int) -> None:
        cap = self.capacity
        if needed <= cap:
            return
        while cap < needed:
            cap *= 2
        extra = cap - self.capacity
        self._talking = np.concatenate([self._talking, np.zeros(extra, dtype=np.bool_)])
        self._last_active = np.concatenate(
            [self._last_active, np.full(extra, -math.inf, dtype=np.float64)]
        )
        self._last_speech = np.concatenate(
            [self._last_speech, np.full(extra, -math.inf, dtype=np.float64)]
        )
        self._run_frames = np.concatenate([self._run_frames, np.zeros(extra, dtype=np.int32)])
        self._run_flatness = np.concatenate([self._run_flatness, np.zeros(extra, dtype=np.float32)])
        self._vads.extend([None] * extra)
        self._prev_shape = np.concatenate(
            [self._prev_shape, np.zeros((extra, _SIMILARITY_LAG, self._bins), dtype=np.float32)]
        )
        self._run_similarity = np.concatenate(
            [self._run_similarity, np.zeros(extra, dtype=np.float32)]
        )
        self._recent_similarity = np.concatenate(
            [self._recent_similarity, np.full(extra, _RECENT_START, dtype=np.float32)]
        )
        self._floor_ms = np.concatenate([self._floor_ms, np.full(extra, self._min_ms)])

    def remove(self, member_id: int) -> None:
        """Forget everything about a member (no event is emitted)."""
        if 0 <= member_id < self.capacity:
            self._talking[member_id] = False
            self._last_active[member_id] = -math.inf
            self._last_speech[member_id] = -math.inf
            self._run_frames[member_id] = 0
            self._run_flatness[member_id] = 0.0
            self._vads[member_id] = None
            self._prev_shape[member_id] = 0.0
            self._run_similarity[member_id] = 0.0
            self._recent_similarity[member_id] = _RECENT_START
            self._floor_ms[member_id] = self._min_ms

    def talking(self, member_id: int) -> bool:
        return 0 <= member_id < self.capacity and bool(self._talking[member_id])

    def open_mask(
        self, members: npt.NDArray[np.intp], now: float, hang_s: float
    ) -> npt.NDArray[np.bool_]:
        """The mix gate of each given member: True while it talks, or until `hang_s` after
        its last active frame (a frame classified as speech, so a talker is mixed from its
        first speech frame, before the start event; or a frame at least `loud_dbfs` loud,
        so a loud steady signal such as a tone is mixed while quiet room noise is not)."""
        ids = np.asarray(members, dtype=np.intp)
        inside = ids < self.capacity
        safe = np.where(inside, ids, 0)
        mask: npt.NDArray[np.bool_] = inside & (
            self._talking[safe] | ((now - self._last_active[safe]) < hang_s - _EPS)
        )
        return mask

    # --- per tick ----------------------------------------------------------------------------

    def classify(
        self, frames: npt.NDArray[np.int16], members: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Per-frame (is_speech, spectral flatness, similarity to the member's previous
        analysed frame) for K frames of the given members: energy gate, then spectral
        features, then webrtcvad. Flatness and similarity are 1.0 for gated-out frames."""
        k = int(frames.shape[0])
        speech = np.zeros(k, dtype=np.bool_)
        frame_flatness = np.ones(k, dtype=np.float32)
        similarity = np.ones(k, dtype=np.float32)
        self.last_gated = 0
        self.last_vad_calls = 0
        if k == 0:
            return speech, frame_flatness, similarity
        x = frames.astype(np.float32)
        mean_square = (np.einsum("ij,ij->i", x, x) / np.float32(FRAME_SAMPLES)).astype(np.float64)
        self._mean_square = mean_square
        floor = self._floor_ms[members]
        gate = np.maximum(floor * self._floor_margin, self._min_ms)
        self._floor_ms[members] = np.minimum(mean_square, floor * self._floor_rise)
        gated = np.flatnonzero(mean_square > gate)
        self.last_gated = int(gated.size)
        if gated.size == 0:
            return speech, frame_flatness, similarity
        feats = analyse(frames[gated])
        # the run test uses the larger of the two flatnesses (white/pink: plain; brown: tilted)
        frame_flatness[gated] = np.maximum(feats.flatness, feats.tilted_flatness)
        passed = np.flatnonzero(
            (feats.flatness < self._max_flatness) & (feats.tonality < self._max_tonality)
        )
        if passed.size == 0:
            return speech, frame_flatness, similarity
        dual, shape = dual_tone_and_shape(feats, passed)
        rows = gated[passed]
        ids = members[rows]
        history = self._prev_shape[ids]  # (P, lag, bins), newest first
        prev = history[:, -1]
        # a member's first analysed frames have no predecessor: count them as similar (1.0)
        similarity[rows] = np.einsum("ij,ij->i", shape, prev) + (
            1.0 - np.einsum("ij,ij->i", prev, prev)
        )
        history[:, 1:] = history[:, :-1]
        history[:, 0] = shape
        self._prev_shape[ids] = history
        candidates = rows[~dual]
        self.last_vad_calls = int(candidates.size)
        if candidates.size == 0:
            return speech, frame_flatness, similarity
        pcm = np.ascontiguousarray(frames, dtype="<i2")
        vads = self._vads
        for row in candidates.tolist():
            mid = int(members[row])
            vad = vads[mid]
            if vad is None:
                vad = webrtcvad.Vad(self._vad_mode)
                vads[mid] = vad
            if vad.is_speech(pcm[row].tobytes(), SAMPLE_RATE):
                speech[row] = True
        return speech, frame_flatness, similarity

    def update(
        self, frames: npt.NDArray[np.int16], members: npt.NDArray[np.integer], now: float
    ) -> list[tuple[int, bool]]:
        """Feed this tick's frames; returns [(member_id, True|False), ...] state changes.

        frames:  (K, 160) int16, one row per member heard this tick (each id at most once).
        members: (K,) non-negative member ids.
        now:     tick time in seconds (monotonic; consecutive ticks 20 ms apart).

        Stop events come first (ascending id), then start events (ascending id). Members
        absent from this call are stopped once `stop_ms` has passed since their last speech.
        """
        if frames.ndim != 2 or frames.shape[1] != FRAME_SAMPLES:
            raise ValueError(f"frames must have shape (K, {FRAME_SAMPLES}), got {frames.shape}")
        ids = np.asarray(members, dtype=np.intp)
        if ids.shape != (frames.shape[0],):
            raise ValueError("members must have shape (K,)")
        if ids.size:
            if int(ids.min()) < 0:
                raise ValueError("member ids must be non-negative")
            self._grow(int(ids.max()) + 1)

        self._mean_square = np.zeros(0, dtype=np.float64)
        speech, frame_flatness, similarity = self.classify(frames, ids)
        speaking_ids = ids[speech]
        active = speech
        if self._mean_square.shape == speech.shape:
            active = speech | (self._mean_square >= self._loud_ms)
        self._last_active[ids[active]] = now
        events: list[tuple[int, bool]] = []

        if speaking_ids.size:
            fresh = (now - self._last_speech[speaking_ids]) > self._gap_s
            self._run_frames[speaking_ids[fresh]] = 0
            self._run_flatness[speaking_ids[fresh]] = 0.0
            self._run_similarity[speaking_ids[fresh]] = 0.0
            # similarity counts from the run's 4th frame on: the first ones are compared
            # with frames from before the run (a pause, another note, another word)
            within = self._run_frames[speaking_ids] >= _SIMILARITY_LAG
            self._run_frames[speaking_ids] += 1
            self._run_flatness[speaking_ids] += frame_flatness[speech]
            self._run_similarity[speaking_ids] += similarity[speech] * within
            recent = self._recent_similarity[speaking_ids]
            recent += np.float32(_RECENT_WEIGHT) * (similarity[speech] - recent)
            self._recent_similarity[speaking_ids] = recent
            self._last_speech[speaking_ids] = now

        stopping = np.flatnonzero(
            self._talking & ((now - self._last_speech) >= self._stop_s - _EPS)
        )
        if stopping.size:
            self._talking[stopping] = False
            self._run_frames[stopping] = 0
            self._run_flatness[stopping] = 0.0
            self._run_similarity[stopping] = 0.0
            events.extend((mid, False) for mid in stopping.tolist())

        if speaking_ids.size:
            run_frames = self._run_frames[speaking_ids]
            compared = run_frames - _SIMILARITY_LAG
            ready = (
                ~self._talking[speaking_ids]
                & (run_frames >= self._start_frames)
                & (self._run_flatness[speaking_ids] < self._max_run_flatness * run_frames)
                & (self._run_similarity[speaking_ids] < self._max_run_similarity * compared)
                & (self._recent_similarity[speaking_ids] < self._max_run_similarity)
            )
            starting = np.sort(speaking_ids[ready])
            if starting.size:
                self._talking[starting] = True
                events.extend((mid, True) for mid in starting.tolist())
        return events
