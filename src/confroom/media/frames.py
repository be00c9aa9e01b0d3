"""`FrameTable`: this tick's audio frames of many sessions, one numpy row per session.

Owns the two per-tick frame slots of every media session of an engine: what the session's
caller said this tick (`inbound`: decoded, with loss concealment) and what the session is to
send (`outbound`: a conference mix), each with a flag saying whether the row holds a frame,
plus the loss-concealment state and the codec. The engine fills `inbound` for all
sessions in a few array operations and encodes `outbound` in one; a mixer gathers its
members' rows with one fancy index and writes its output the same way. A session outside
any engine has a table of its own, so the same code serves both.

Loss concealment (in the spirit of ITU-T G.711 Appendix I, an own implementation): each row
keeps its previous frame (`prev`, with `inbound` the last 40 ms played). When a frame is
missing, the pitch period of that history is estimated by normalised autocorrelation
(40..120 samples, 66..200 Hz), and the last period is repeated, its seam cross-faded over a
quarter period so the repeats join smoothly. The first 10 ms play at full level, then the
level falls by 20 % per 10 ms, reaching silence 60 ms into the loss; after `PLC_FRAMES`
concealed frames the row holds nothing. The first real frame after a loss is overlap-added
with the continuing concealment (4 ms, plus 4 ms per further 10 ms lost, up to 10 ms), so
neither boundary clicks. Only the rows that lost a frame this tick do this work, vectorised.

Wideband rows (G.722, Opus: `wide`) have 16 kHz slots besides: `inbound_wb` (what the caller
said, at 16 kHz) and `outbound_wb` (a wideband conference mix to send; when a row has none,
the engine sends its 8 kHz `outbound` resampled). Their 8 kHz `inbound` is always filled too
(the decoded audio resampled), so talk detection, speech recognition and narrowband mixes
read every row alike. Setting a row's 8 kHz outbound (a prompt) drops its wideband one. The
resampling histories of the engine and the mixers live here too, one row per session.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from confroom.media.resample import DOWN_HISTORY, UP_HISTORY
from confroom.media.sources import FRAME_SAMPLES, Frame

__all__ = ["PLC_FRAMES", "WB_SAMPLES", "FrameTable"]

WB_SAMPLES: Final = 2 * FRAME_SAMPLES  # 20 ms at 16 kHz

PLC_FRAMES: Final = 3  # concealment lasts 60 ms (fading out), then the row holds nothing
_HIST: Final = 2 * FRAME_SAMPLES  # samples of history per row (prev + inbound)
_PITCH_MIN: Final = 40  # 200 Hz
_PITCH_MAX: Final = 120  # 66 Hz
_CORR_LEN: Final = 160  # samples compared by the pitch search (the last 20 ms)
_FULL: Final = 80  # samples of a loss played at full level (10 ms)
_FADE_PER_SAMPLE: Final = 0.2 / 80  # then -20 % per 10 ms: silence 60 ms into the loss
_OLA_BASE: Final = 32  # recovery overlap-add: 4 ms ...
_OLA_STEP: Final = 32  # ... plus 4 ms per further 10 ms lost ...
_OLA_MAX: Final = 80  # ... up to 10 ms
_LAGS: Final = np.arange(_PITCH_MIN, _PITCH_MAX + 1)


class FrameTable:
    """Rows of frames (see the module docstring). Rows are numbered from 0; `open()` gives
    out a free row, `close()` takes it back. The arrays grow (doubling) in `open()`, so index
    them afresh after it."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = 0
        self.inbound = np.zeros((0, FRAME_SAMPLES), dtype=np.int16)
        self.has_inbound = np.zeros(0, dtype=bool)
        self.outbound = np.zeros((0, FRAME_SAMPLES), dtype=np.int16)
        self.has_outbound = np.zeros(0, dtype=bool)
        self.plc_left = np.zeros(0, dtype=np.int64)  # concealment frames left per row
        self.prev = np.zeros((0, FRAME_SAMPLES), dtype=np.int16)  # the frame before inbound
        self.plc_pitch = np.zeros(0, dtype=np.int64)  # pitch period of the concealment
        self.plc_done = np.zeros(0, dtype=np.int64)  # samples concealed in the current loss
        self.plc_period = np.zeros((0, _PITCH_MAX), dtype=np.float32)  # the repeated period
        self.plc_decay = np.ones(0, dtype=np.float32)  # level trend per 10 ms before the loss
        self.alaw = np.zeros(0, dtype=bool)  # the row's codec is PCMA (else PCMU)
        self.wide = np.zeros(0, dtype=bool)  # the row's codec is wideband (G.722, Opus)
        self.n_wide = 0  # rows with `wide` set (0: the wideband paths cost nothing)
        self.inbound_wb = np.zeros((0, WB_SAMPLES), dtype=np.int16)
        self.has_inbound_wb = np.zeros(0, dtype=bool)
        self.outbound_wb = np.zeros((0, WB_SAMPLES), dtype=np.int16)
        self.has_outbound_wb = np.zeros(0, dtype=bool)
        self.quiet_wb = np.zeros(0, dtype=bool)  # the last decoded 16 kHz frame was quiet
        # resampling histories: decoded 16 kHz -> 8 kHz inbound (engine), 8 kHz outbound ->
        # 16 kHz (engine), 8 kHz voice -> 16 kHz mix and 16 kHz mix -> 8 kHz listener (mixer)
        self.in_down_hist = np.zeros((0, DOWN_HISTORY), dtype=np.int16)
        self.out_up_hist = np.zeros((0, UP_HISTORY), dtype=np.int16)
        self.mix_up_hist = np.zeros((0, UP_HISTORY), dtype=np.int16)
        self.mix_down_hist = np.zeros((0, DOWN_HISTORY), dtype=np.int16)
        self._free: list[int] = []
        self.version = 0  # changes whenever a row is given out or taken back
        self.concealed = 0  # missing frames replaced by concealment, all rows, ever
        self._grow(max(1, capacity))

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        for name in (
            "inbound", "has_inbound", "outbound", "has_outbound", "plc_left", "alaw", "prev",
            "plc_pitch", "plc_done", "plc_period", "plc_decay", "wide", "inbound_wb",
            "has_inbound_wb", "outbound_wb", "has_outbound_wb", "quiet_wb", "in_down_hist",
            "out_up_hist",
            "mix_up_hist", "mix_down_hist",
        ):
            a = getattr(self, name)
            new = np.zeros((capacity, *a.shape[1:]), dtype=a.dtype)
            new[:old] = a
            setattr(self, name, new)
        self._free.extend(range(capacity - 1, old - 1, -1))
        self.capacity = capacity

    def open(self) -> int:
        if not self._free:
            self._grow(self.capacity * 2)
        row = self._free.pop()
        self.clear(row)
        self.alaw[row] = False
        self.version += 1
        return row

    def close(self, row: int) -> None:
        self.clear(row)
        self.set_wide(row, False)
        self._free.append(row)
        self.version += 1

    def set_wide(self, row: int, wide: bool) -> None:
        """Mark the row's codec wideband (16 kHz slots used) or not."""
        if bool(self.wide[row]) != wide:
            self.n_wide += 1 if wide else -1
            self.wide[row] = wide

    def clear(self, row: int) -> None:
        self.has_inbound[row] = False
        self.has_outbound[row] = False
        self.plc_left[row] = 0
        self.plc_done[row] = 0
        self.prev[row] = 0
        self.has_inbound_wb[row] = False
        self.has_outbound_wb[row] = False
        self.in_down_hist[row] = 0
        self.out_up_hist[row] = 0
        self.mix_up_hist[row] = 0
        self.mix_down_hist[row] = 0

    # --- one row, as the session's `inbound` / `mix_out` attributes -------------------------

    def get_inbound(self, row: int) -> Frame | None:
        return self.inbound[row].copy() if self.has_inbound[row] else None

    def set_inbound(self, row: int, frame: Frame | None) -> None:
        self.has_inbound_wb[row] = False
        if frame is None:
            self.has_inbound[row] = False
        else:
            self.inbound[row] = frame
            self.has_inbound[row] = True

    def get_outbound(self, row: int) -> Frame | None:
        return self.outbound[row].copy() if self.has_outbound[row] else None

    def set_outbound(self, row: int, frame: Frame | None) -> None:
        self.has_outbound_wb[row] = False  # a prompt (or silence) replaces a wideband mix
        if frame is None:
            self.has_outbound[row] = False
        else:
            self.outbound[row] = frame
            self.has_outbound[row] = True

    # --- the engine's pass over all rows ------------------------------------------------------

    def take_inbound(
        self, rows: npt.NDArray[np.intp], pcm: npt.NDArray[np.int16], ok: npt.NDArray[np.bool_]
    ) -> None:
        """This tick's inbound for `rows`: `pcm[k]` where `ok[k]` (overlap-added with the
        concealment's continuation where a loss ends); otherwise, while the row's concealment
        lasts, pitch-repetition concealment (see the module docstring); otherwise nothing."""
        self.prev[rows] = self.inbound[rows]
        got = rows[ok]
        if len(got):
            recovering = got[self.plc_done[got] > 0]
            self.inbound[got] = pcm[ok]
            if len(recovering):
                self._recover(recovering)
            self.has_inbound[got] = True
            self.plc_left[got] = PLC_FRAMES
        if len(got) == len(rows):
            return
        missing = rows[~ok]
        conceal = missing[self.plc_left[missing] > 0]
        self.has_inbound[missing] = False
        self.plc_done[missing[self.plc_left[missing] == 0]] = 0
        if len(conceal):
            self._conceal(conceal)
            self.plc_left[conceal] -= 1
            self.has_inbound[conceal] = True
            self.concealed += len(conceal)

    def _synth(self, rows: npt.NDArray[np.intp], n: int) -> npt.NDArray[np.float32]:
        """The next `n` samples of the rows' concealment (level envelope applied)."""
        pos = self.plc_done[rows][:, None] + np.arange(n)
        pitch = self.plc_pitch[rows][:, None]
        out = np.take_along_axis(self.plc_period[rows], pos % pitch, axis=1)
        gain = np.clip(1.0 - (pos - _FULL) * _FADE_PER_SAMPLE, 0.0, 1.0)
        gain *= self.plc_decay[rows][:, None] ** ((pos + 1) / _FULL)
        result: npt.NDArray[np.float32] = out * gain.astype(np.float32)
        return result

    def _conceal(self, rows: npt.NDArray[np.intp]) -> None:
        start = rows[self.plc_done[rows] == 0]
        if len(start):
            self._start_loss(start)
        self.inbound[rows] = np.rint(self._synth(rows, FRAME_SAMPLES)).astype(np.int16)
        self.plc_done[rows] += FRAME_SAMPLES

    def _start_loss(self, rows: npt.NDArray[np.intp]) -> None:
        """Pitch estimate and the period to repeat, from the rows' last 40 ms."""
        hist = np.concatenate((self.prev[rows], self.inbound[rows]), axis=1).astype(np.float32)
        tail = hist[:, _HIST - _CORR_LEN :]
        # windows[k, j, :] = hist[k, _HIST - _CORR_LEN - lag_j : _HIST - lag_j]
        view = np.lib.stride_tricks.sliding_window_view(hist, _CORR_LEN, axis=1)
        starts = _HIST - _CORR_LEN - _LAGS
        windows = view[:, starts]
        dot = np.einsum("kn,kjn->kj", tail, windows)
        energy = np.einsum("kjn,kjn->kj", windows, windows) + 1e-3
        score = np.where(dot > 0, dot * dot / energy, 0.0)
        pitch = _LAGS[np.argmax(score, axis=1)]
        self.plc_pitch[rows] = pitch
        # One period (the last `pitch` samples); its last quarter cross-faded with the quarter
        # before the period, so the end of one repeat flows into the start of the next.
        j = np.arange(_PITCH_MAX)
        idx = _HIST - pitch[:, None] + np.minimum(j, pitch[:, None] - 1)
        period = np.take_along_axis(hist, idx, axis=1)
        quarter = np.maximum(pitch // 4, 1)[:, None]
        into = j - (pitch[:, None] - quarter)  # 0..quarter-1 within the seam
        seam = (into >= 0) & (j < pitch[:, None])
        w = np.clip((into + 1) / (quarter + 1), 0.0, 1.0).astype(np.float32)
        before = np.take_along_axis(hist, np.clip(idx - pitch[:, None], 0, _HIST - 1), axis=1)
        period = np.where(seam, period * (1 - w) + before * w, period)
        self.plc_period[rows] = period
        # A level already falling (the end of a word) keeps falling at that rate.
        last = np.sqrt(np.mean(hist[:, -_FULL:] ** 2, axis=1))
        before = np.maximum(np.sqrt(np.mean(hist[:, -2 * _FULL : -_FULL] ** 2, axis=1)), 1.0)
        self.plc_decay[rows] = np.clip(last / before, 0.0, 1.0)
        self.plc_done[rows] = 0

    def _recover(self, rows: npt.NDArray[np.intp]) -> None:
        """Overlap-add the start of the rows' first real frame after a loss with the
        concealment's continuation; the loss is over."""
        lost = self.plc_done[rows]
        n = np.minimum(_OLA_BASE + _OLA_STEP * ((lost - FRAME_SAMPLES) // 80), _OLA_MAX)
        synth = self._synth(rows, _OLA_MAX)
        j = np.arange(_OLA_MAX)
        w = np.clip((j[None, :] + 1) / (n[:, None] + 1), 0.0, 1.0).astype(np.float32)
        real = self.inbound[rows, :_OLA_MAX].astype(np.float32)
        mixed = real * w + synth * (1 - w)
        self.inbound[rows, :_OLA_MAX] = np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)
        self.plc_done[rows] = 0
