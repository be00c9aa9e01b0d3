"""Conference mixing: N-1 ("everyone but me") mixes, batched across conferences.

Owns `mix_conferences` (the N-1 mixes of many conferences in one pass: the media clock mixes
every conference of the node with it), `mix` (one conference), `mix_with_audience`
(coach/whisper: a speaker heard only by one tag group) and `beep_frames` (a short faded tone
a conference overlays on everyone's output).

Pure, sans-IO numpy on int16 frames of `FRAME_SAMPLES` samples (8 kHz) or twice that (a
wideband conference's 16 kHz mix; every frame of one call has the same width). Each
conference's sum of its
speaking rows is taken once in int32 (exact for any realistic member count), every member
gets its conference's sum minus its own contribution, and the result is clipped: saturating
at -32768/32767, never wrapping. The number of array passes per tick does not depend on the
number of conferences or members.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from confroom.media.sources import FRAME_SAMPLES, SAMPLE_RATE

__all__ = [
    "beep_frames",
    "mix",
    "mix_conferences",
    "mix_with_audience",
]

Int16Frames = npt.NDArray[np.int16]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]

_I16_MIN = -32768
_I16_MAX = 32767
_SMALL = 8 * FRAME_SAMPLES  # below this many samples, call overhead dominates


_WIDTHS = (FRAME_SAMPLES, 2 * FRAME_SAMPLES)


def _check_frames(frames: Int16Frames, speaking: BoolArray) -> int:
    if frames.ndim != 2 or frames.shape[1] not in _WIDTHS:
        raise ValueError(
            f"frames must have shape (M, {FRAME_SAMPLES} or {2 * FRAME_SAMPLES}), "
            f"got {frames.shape}")
    if frames.dtype != np.int16:
        raise TypeError(f"frames must be int16, got {frames.dtype}")
    m = int(frames.shape[0])
    if speaking.shape != (m,):
        raise ValueError(f"speaking must have shape ({m},), got {speaking.shape}")
    return m


def _out_buffer(out: Int16Frames | None, m: int, width: int = FRAME_SAMPLES) -> Int16Frames:
    if out is None:
        return np.empty((m, width), dtype=np.int16)
    if out.shape != (m, width) or out.dtype != np.int16:
        raise ValueError(f"out must be int16 of shape ({m}, {width}), got {out.shape}")
    return out


def _sum_rows(frames: Int16Frames, rows: IntArray) -> npt.NDArray[np.int32]:
    """int32 sum of the given rows (zeros when there are none)."""
    if rows.size == 0:
        return np.zeros(frames.shape[1], dtype=np.int32)
    if rows.size == 1:
        one: npt.NDArray[np.int32] = frames[int(rows[0])].astype(np.int32)
        return one
    picked = frames if rows.size == frames.shape[0] else frames[rows]
    total: npt.NDArray[np.int32] = picked.sum(axis=0, dtype=np.int32)
    return total


def _saturate(x: npt.NDArray[np.int32]) -> None:
    """Clamp int32 values to the int16 range in place (np.minimum/np.maximum: several times
    less call overhead than np.clip on small arrays)."""
    if x.size <= _SMALL:
        np.minimum(x, _I16_MAX, out=x)
        np.maximum(x, _I16_MIN, out=x)
    else:
        np.clip(x, _I16_MIN, _I16_MAX, out=x)


def _clip16(x: npt.NDArray[np.int32]) -> Int16Frames:
    _saturate(x)
    return x.astype(np.int16)


def _subtract_own(
    out: Int16Frames,
    heard: npt.NDArray[np.int32],
    frames: Int16Frames,
    rows: IntArray,
) -> None:
    """out[rows] = clip(heard - frames[rows]); `heard` is (160,) or (len(rows), 160)."""
    if rows.size == 0:
        return
    if rows.size == frames.shape[0]:  # every row: no gather/scatter needed
        diff = np.subtract(heard, frames, dtype=np.int32)
        _saturate(diff)
        out[...] = diff
        return
    diff = np.subtract(heard, frames[rows], dtype=np.int32)
    _saturate(diff)
    out[rows] = diff


def mix_conferences(
    frames: Int16Frames,
    speaking: BoolArray,
    starts: IntArray,
    conf_of_row: IntArray,
    out: Int16Frames | None = None,
    *,
    overlays: dict[int, Int16Frames] | None = None,
) -> tuple[Int16Frames, npt.NDArray[np.int32]]:
    """N-1 mixes of many conferences in one batched pass (cost linear in rows, whatever the
    number of conferences).

    frames:      (M, 160) int16, rows grouped by conference: conference c owns the rows
                 starts[c] up to starts[c + 1] (the last one up to M); none is empty.
    speaking:    (M,) bool, True where the member's audio goes into its conference's mix.
    starts:      (C,) first row of each conference, increasing, starts[0] == 0.
    conf_of_row: (M,) the conference of each row (the expansion of `starts`).
    overlays:    {c: (160,) int16} added to everything conference c's members hear (beeps).

    Returns (out, totals): out row i is ``clip(total[c] - frames[i])`` for a speaking member
    of conference c and ``clip(total[c])`` for the others; totals is (C, 160) int32, each
    conference's sum of speaking rows plus its overlay, unclipped (what a silent listener
    hears before clipping, e.g. for recording).
    """
    m = _check_frames(frames, speaking)
    result = _out_buffer(out, m, frames.shape[1])
    if m == 0:
        return result, np.zeros((0, frames.shape[1]), dtype=np.int32)
    own = frames.astype(np.int32)
    own *= speaking[:, None]
    totals: npt.NDArray[np.int32] = np.add.reduceat(own, starts, axis=0)
    if overlays:
        for c, frame in overlays.items():
            totals[c] += frame
    heard = totals[conf_of_row]
    heard -= own
    _saturate(heard)
    result[...] = heard
    return result, totals


_ONE_CONFERENCE = np.zeros(1, dtype=np.intp)


def mix(
    frames: Int16Frames,
    speaking: BoolArray,
    out: Int16Frames | None = None,
    *,
    overlay: Int16Frames | None = None,
) -> Int16Frames:
    """N-1 mix of one conference: `mix_conferences` with every row in conference 0.

    Row i of the result is ``clip(total - frames[i])`` for a speaking member and
    ``clip(total)`` for the others, where ``total`` is the int32 sum of all speaking rows
    (plus the overlay, e.g. a beep). A lone member therefore hears silence (or the overlay).
    """
    m = _check_frames(frames, speaking)
    result, _ = mix_conferences(
        frames, speaking, _ONE_CONFERENCE[: 1 if m else 0], np.zeros(m, dtype=np.intp), out,
        overlays=None if overlay is None else {0: overlay},
    )
    return result


def mix_with_audience(
    frames: Int16Frames,
    speaking: BoolArray,
    restricted: npt.NDArray[np.integer],
    member_group: npt.NDArray[np.integer],
    out: Int16Frames | None = None,
    *,
    overlay: Int16Frames | None = None,
) -> Int16Frames:
    """N-1 mix with coach/whisper audiences.

    restricted:   (M,) int; for each member the audience group its audio is restricted to
                  (``speakOnlyTo``), or -1 when everyone hears it.
    member_group: (M,) int; the group each member belongs to (its ``memberTag``), or -1.
                  Group numbers are small non-negative ints chosen by the caller (e.g. one
                  per distinct tag in the conference).

    Everyone hears the public sum (speaking members with ``restricted == -1``); a member of
    group g additionally hears the sum of speaking members restricted to g. Nobody hears
    themself: a member's own frame is subtracted from exactly the sum(s) that contain it
    (a coach restricted to a group it is not in hears only the public mix).

    Per-group sums are taken only over the restricted *speaking* rows (sorted by group and
    reduced with `np.add.reduceat`), so their cost is proportional to the number of
    restricted speakers, not to M x groups. Each output row is then a gather of its group's
    pre-clipped mix plus, for the speakers, one subtraction.
    """
    m = _check_frames(frames, speaking)
    result = _out_buffer(out, m, frames.shape[1])
    if m == 0:
        return result
    restricted = np.asarray(restricted)
    member_group = np.asarray(member_group)
    if restricted.shape != (m,) or member_group.shape != (m,):
        raise ValueError("restricted and member_group must have shape (M,)")

    is_public = restricted < 0
    public_rows = np.flatnonzero(speaking & is_public)
    private_rows = np.flatnonzero(speaking & ~is_public)
    total = _sum_rows(frames, public_rows)
    if overlay is not None:
        total += overlay.astype(np.int32)

    if private_rows.size == 0:
        # No whisperers speaking: identical to the plain mix.
        result[...] = _clip16(total.copy())
        _subtract_own(result, total, frames, public_rows)
        return result

    n_groups = int(max(int(restricted.max()), int(member_group.max()))) + 1
    # heard[g] = what a member of group g hears (before removing its own voice);
    # the extra last row is for members without a group (index -1 lands there).
    heard = np.empty((n_groups + 1, frames.shape[1]), dtype=np.int32)
    heard[:] = total
    groups = restricted[private_rows]
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    sums = np.add.reduceat(frames[private_rows[order]].astype(np.int32), starts, axis=0)
    heard[sorted_groups[starts]] += sums

    heard16 = _clip16(heard.copy())
    group_index = np.where(member_group < 0, n_groups, member_group)
    np.take(heard16, group_index, axis=0, out=result)

    # Rows whose own voice is inside what they hear: public speakers (everyone hears them)
    # and restricted speakers who belong to their own audience group.
    own_rows = np.flatnonzero(speaking & (is_public | (restricted == member_group)))
    if own_rows.size:
        _subtract_own(result, heard[group_index[own_rows]], frames, own_rows)
    return result


def beep_frames(
    freq: float = 1000.0, duration_s: float = 0.2, amplitude: float = 0.25,
    rate: int = SAMPLE_RATE,
) -> list[Int16Frames]:
    """A sine beep as whole 20 ms frames, with 5 ms raised-cosine fade in/out (no clicks).

    `amplitude` is the peak relative to full scale (0.25 is about -15 dBFS RMS). The last
    frame is zero-padded.
    """
    if not 0.0 <= amplitude <= 1.0:
        raise ValueError("amplitude must be within [0, 1]")
    n = max(1, round(duration_s * rate))
    t = np.arange(n, dtype=np.float64) / rate
    wave = amplitude * 32767.0 * np.sin(2.0 * math.pi * freq * t)
    fade = min(round(0.005 * rate), n // 2)
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(math.pi * np.arange(fade, dtype=np.float64) / fade)
        wave[:fade] *= ramp
        wave[n - fade :] *= ramp[::-1]
    size = rate // 50  # samples per 20 ms
    n_frames = math.ceil(n / size)
    padded = np.zeros(n_frames * size, dtype=np.int16)
    padded[:n] = np.round(wave).astype(np.int16)
    return [padded[i * size : (i + 1) * size].copy() for i in range(n_frames)]
