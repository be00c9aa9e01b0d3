"""Conference audio on the media clock: `MixBus` mixes every conference of the node per tick.

`ConferenceAudio` is one conference's handle: its mixed members, its beeps (overlays added to
everything its members hear) and its recorder. All handles belong to one `MixBus`, registered
once with the `MediaEngine` as its mixer. Each tick the bus:

1. gathers every mixed member's decoded frame into one (N, 160) buffer, rows grouped by
   conference, with one fancy index into the engine's `FrameTable` (the layout is rebuilt
   only when membership, a member's flags or the table's rows change; members whose
   sessions are not in one table, as in unit tests, are copied one by one);
2. runs one talk detector over every member heard this tick (held members are not reported);
3. mixes all conferences in one `mix_conferences` call (muted and held members are not summed;
   nobody hears itself; with the talk gate on, the default, a member is summed only while its
   gate is open: see `TalkGate`); conferences with a coach/whisper member (`speakOnlyTo`) are
   mixed again on their own rows with `mix_with_audience`;
4. writes each listening member's row to its `mix_out` (one scatter into the table), feeds
   the recorders (what a silent
   listener without a tag hears) and reports talking changes.

So the number of numpy passes per tick does not grow with the number of conferences.

Wideband: a conference with a wideband member (G.722, Opus) is mixed again at 16 kHz, all
such conferences in one `mix_conferences` call: wideband members bring their 16 kHz frames,
narrowband members' frames are resampled up (one batch); wideband members get the 16 kHz
mix (their full band), narrowband members the 16 kHz mix resampled down to 8 kHz (one batch:
band-limited by the resampler's filter), so everyone hears everyone in its own band and
never itself, with mutes, holds, the talk gate, coach/whisper and beeps as at 8 kHz. The
recorder of a wideband conference gets the 16 kHz mix. Talk detection stays at 8 kHz (every
member has an 8 kHz frame). A pure G.711 node skips all of this (`FrameTable.n_wide` is 0).

Node-to-node legs of a cluster (`Member.leg`) are rows too: a leg's frame (the peer node's
local sum) is always summed (no talk detection or gate: the peer already gated its members),
and a leg is sent its conference's total minus every leg (this node's local sum), so nothing
received from a node is sent on to another and audio cannot loop.
Legs carry 8 kHz: in a wideband conference a leg still gets the 8 kHz local sum
(written after the 16 kHz pass), so members on another node hear it band-limited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from confroom.conference.model import Member
from confroom.conference.recorder import MixRecorder
from confroom.media.frames import FrameTable
from confroom.media.mixer import beep_frames, mix_conferences, mix_with_audience
from confroom.media.resample import down2, up2
from confroom.media.sources import FRAME_SAMPLES, Frame
from confroom.media.talk import TalkDetector

_BEEP = beep_frames()
_BEEP16 = beep_frames(rate=16000)


@dataclass(frozen=True)
class TalkGate:
    """Talk-gated mixing: who is summed into the mix.

    With `enabled`, a member is summed while the talk detector says it talks (until 800 ms
    after its last speech frame), from its first speech frame on (before the start-talking
    event, so the onset of a word is not cut), and for `hang_ms` after its last frame that
    was speech or at least `level_dbfs` loud (a loud steady signal such as a tone is mixed;
    quiet room noise is not, so it no longer adds up over many members). Disabled: every
    unmuted, unheld member is summed all the time."""

    enabled: bool = True
    hang_ms: int = 400
    level_dbfs: float = -35.0


class ConferenceAudio:
    """One conference's members, beeps and recorder, mixed by the bus it is attached to."""

    def __init__(self, on_talking: Callable[[Member, bool], None]) -> None:
        self.on_talking = on_talking
        self._members: list[Member] = []
        self._recorder: MixRecorder | None = None
        self._overlay: list[Frame] = []
        self._overlay_pos = 0
        self.bus: MixBus | None = None

    # ---- membership -------------------------------------------------------------------

    def add(self, member: Member) -> None:
        self._members.append(member)
        if self.bus is not None:
            self.bus.member_added(member)

    def remove(self, member: Member) -> None:
        if member in self._members:
            self._members.remove(member)
            member.media.mix_out = None
            if self.bus is not None:
                self.bus.member_removed(member)

    def flags_changed(self) -> None:
        """Call after changing a member's muted / on_hold / tag / speak_only_to."""
        if self.bus is not None:
            self.bus.layout_changed()

    @property
    def recorder(self) -> MixRecorder | None:
        return self._recorder

    @recorder.setter
    def recorder(self, rec: MixRecorder | None) -> None:
        self._recorder = rec
        if self.bus is not None:
            self.bus.layout_changed()  # the bus keeps its recorders in the layout

    def stop_recording(self) -> MixRecorder | None:
        """Finish the recording (if any) and return its recorder."""
        rec, self.recorder = self.recorder, None
        if rec is not None:
            rec.close()
        return rec

    def beep(self) -> None:
        """Overlay a beep on everything this conference's members hear (restarts one playing)."""
        self._overlay = list(_BEEP)
        self._overlay_pos = 0

    @property
    def beeping(self) -> bool:
        return self._overlay_pos < len(self._overlay)

    def overlay16(self) -> Frame | None:
        """The 16 kHz twin of the overlay frame `next_overlay()` returned last."""
        pos = self._overlay_pos - 1
        return _BEEP16[pos] if 0 <= pos < len(_BEEP16) else None

    def next_overlay(self) -> Frame | None:
        """This tick's overlay frame, if a beep is playing."""
        if self._overlay_pos >= len(self._overlay):
            return None
        frame = self._overlay[self._overlay_pos]
        self._overlay_pos += 1
        return frame

    @property
    def members(self) -> list[Member]:
        return list(self._members)


class MixBus:
    """Mixes every attached conference per tick (see the module docstring)."""

    def __init__(self, capacity: int = 64, gate: TalkGate | None = None) -> None:
        self._confs: list[ConferenceAudio] = []
        self._gate = gate or TalkGate()
        self._hang_s = self._gate.hang_ms / 1000.0
        self._talk = TalkDetector(capacity, loud_dbfs=self._gate.level_dbfs)
        self._slots: dict[int, int] = {}  # member_id -> talk-detector slot (small, reused)
        self._free_slots: list[int] = []
        self._buf = np.zeros((capacity, FRAME_SAMPLES), dtype=np.int16)
        self._out = np.zeros((capacity, FRAME_SAMPLES), dtype=np.int16)
        self._dirty = True
        # the layout: rows grouped by conference
        self._rows: list[Member] = []
        self._row_conf: list[ConferenceAudio] = []  # the conference of each row
        self._mixed: list[ConferenceAudio] = []  # conferences with rows, in row order
        self._starts = np.zeros(0, dtype=np.intp)
        self._conf_of_row = np.zeros(0, dtype=np.intp)
        self._speak_ok = np.zeros(0, dtype=bool)
        self._listens = np.zeros(0, dtype=bool)
        self._slot_ids = np.zeros(0, dtype=np.intp)
        self._legs = np.zeros(0, dtype=np.intp)  # rows of node-to-node legs
        self._not_leg = np.zeros(0, dtype=bool)
        # the FrameTable all rows' sessions share (None: they do not), its version at layout
        # time and each row's frame row in it
        self._table: FrameTable | None = None
        self._table_version = -1
        self._frame_rows = np.zeros(0, dtype=np.intp)
        # conferences (by index in _mixed) mixed again for coach/whisper: (index, restricted,
        # member_group) with the arrays over that conference's rows
        self._audience: list[tuple[int, npt.NDArray[np.intp], npt.NDArray[np.intp]]] = []
        # recording conferences: (recorder, index in _mixed or None while nobody is mixed)
        self._recording: list[tuple[MixRecorder, int | None]] = []

    # ---- attachment ---------------------------------------------------------------------

    def attach(self, conf: ConferenceAudio) -> None:
        conf.bus = self
        self._confs.append(conf)
        for m in conf.members:
            self.member_added(m)
        self._dirty = True

    def detach(self, conf: ConferenceAudio) -> None:
        if conf in self._confs:
            self._confs.remove(conf)
            for m in conf.members:
                self.member_removed(m)
            conf.bus = None
            self._dirty = True

    def member_added(self, member: Member) -> None:
        slot = self._free_slots.pop() if self._free_slots else len(self._slots)
        self._slots[member.member_id] = slot
        self._dirty = True

    def member_removed(self, member: Member) -> None:
        slot = self._slots.pop(member.member_id, None)
        if slot is not None:
            self._talk.remove(slot)
            self._free_slots.append(slot)
        self._dirty = True

    def layout_changed(self) -> None:
        self._dirty = True

    @property
    def conferences(self) -> list[ConferenceAudio]:
        return list(self._confs)

    # ---- layout -------------------------------------------------------------------------

    def _layout(self) -> None:
        rows: list[Member] = []
        row_conf: list[ConferenceAudio] = []
        mixed: list[ConferenceAudio] = []
        starts: list[int] = []
        self._audience = []
        for conf in self._confs:
            ms = conf._members
            if not ms:
                continue
            starts.append(len(rows))
            if any(m.speak_only_to for m in ms):
                self._audience.append((len(mixed), *_audience_groups(ms)))
            mixed.append(conf)
            rows.extend(ms)
            row_conf.extend([conf] * len(ms))
        n = len(rows)
        if n > self._buf.shape[0]:
            cap = self._buf.shape[0]
            while cap < n:
                cap *= 2
            self._buf = np.zeros((cap, FRAME_SAMPLES), dtype=np.int16)
            self._out = np.zeros((cap, FRAME_SAMPLES), dtype=np.int16)
        self._rows, self._row_conf, self._mixed = rows, row_conf, mixed
        self._starts = np.array(starts, dtype=np.intp)
        self._conf_of_row = np.repeat(
            np.arange(len(mixed), dtype=np.intp), np.diff(np.r_[self._starts, n])
        )
        self._speak_ok = np.array([not (m.muted or m.on_hold) for m in rows], dtype=bool)
        self._listens = np.array([not m.on_hold for m in rows], dtype=bool)
        self._slot_ids = np.array([self._slots[m.member_id] for m in rows], dtype=np.intp)
        is_leg = np.array([m.leg for m in rows], dtype=bool)
        self._legs = np.flatnonzero(is_leg)
        self._not_leg = ~is_leg
        tables = {id(m.media.frames): m.media.frames for m in rows}
        self._table = next(iter(tables.values())) if len(tables) == 1 else None
        self._table_version = self._table.version if self._table is not None else -1
        self._frame_rows = np.array([m.media.frame_row for m in rows], dtype=np.intp)
        index = {id(conf): c for c, conf in enumerate(mixed)}
        self._recording = [
            (conf.recorder, index.get(id(conf)))
            for conf in self._confs
            if conf.recorder is not None
        ]
        self._dirty = False

    # ---- the tick -------------------------------------------------------------------------

    def mix(self, now: float) -> None:
        table = self._table
        if self._dirty or (table is not None and table.version != self._table_version):
            self._layout()
            table = self._table
        rows = self._rows
        n = len(rows)
        if n == 0:
            for rec, _ in self._recording:
                rec.write(None, now)
            return
        if table is not None:
            frame_rows = self._frame_rows
            buf = table.inbound[frame_rows]
            present = table.has_inbound[frame_rows]
            buf[~present] = 0
        else:
            buf = self._buf[:n]
            present = np.zeros(n, dtype=bool)
            for i, m in enumerate(rows):
                frame = m.media.inbound
                if frame is None:
                    buf[i] = 0
                else:
                    buf[i] = frame
                    present[i] = True
        # talking: every member heard this tick except the held ones
        legs = self._legs
        detect = np.flatnonzero(present & self._listens & self._not_leg)
        changes = self._talk.update(buf[detect], self._slot_ids[detect], now)

        speaking = present & self._speak_ok
        if self._gate.enabled:
            speaking &= self._talk.open_mask(self._slot_ids, now, self._hang_s)
            if len(legs):
                speaking[legs] = present[legs]
        overlays: dict[int, Frame] = {}
        for c, conf in enumerate(self._mixed):
            if conf._overlay:
                frame = conf.next_overlay()
                if frame is not None:
                    overlays[c] = frame
        out, totals = mix_conferences(
            buf, speaking, self._starts, self._conf_of_row, self._out[:n], overlays=overlays
        )
        starts = self._starts
        for c, restricted, group in self._audience:
            a = int(starts[c])
            b = a + len(restricted)
            mix_with_audience(buf[a:b], speaking[a:b], restricted, group, out[a:b],
                              overlay=overlays.get(c))
            # a silent listener without a tag does not hear the whisperers
            public = speaking[a:b] & (restricted < 0)
            totals[c] = buf[a:b][public].sum(axis=0, dtype=np.int32)
            if c in overlays:
                totals[c] += overlays[c]
        wide_totals: dict[int, npt.NDArray[np.int32]] = {}
        if table is not None and table.n_wide:
            wide_totals = self._mix_wide(table, buf, present, speaking, overlays, out)
        self._record(totals, now, wide_totals)
        if len(legs):
            self._leg_out(buf, speaking, totals, out)

        listens = self._listens
        if table is not None:
            to = self._frame_rows[listens]
            table.outbound[to] = out[listens]
            table.has_outbound[to] = True
        else:
            for i, m in enumerate(rows):
                if listens[i]:
                    m.media.mix_out = out[i]
        if changes:
            slots = self._slot_ids
            by_slot = {int(slots[i]): i for i in range(n)}
            for slot, talking in changes:
                row = by_slot.get(slot)
                if row is None:
                    continue
                member = rows[row]
                if member.talking != talking:
                    member.talking = talking
                    self._row_conf[row].on_talking(member, talking)

    def _mix_wide(
        self, table: FrameTable, buf: npt.NDArray[np.int16], present: npt.NDArray[np.bool_],
        speaking: npt.NDArray[np.bool_], overlays: dict[int, Frame],
        out: npt.NDArray[np.int16],
    ) -> dict[int, npt.NDArray[np.int32]]:
        """The 16 kHz mixes of the conferences with a wideband member (see the module
        docstring): wideband listeners' `outbound_wb` rows are written here, narrowband
        listeners' rows of `out` replaced by the 16 kHz mix resampled. Returns each such
        conference's 16 kHz total (by index in `_mixed`), for its recorder."""
        frame_rows = self._frame_rows
        wide = table.wide[frame_rows]
        if not wide.any():
            return {}
        conf_wide = np.logical_or.reduceat(wide, self._starts)
        sel = np.flatnonzero(conf_wide[self._conf_of_row])
        fr = frame_rows[sel]
        w = wide[sel]
        b16 = np.zeros((len(sel), 2 * FRAME_SAMPLES), dtype=np.int16)
        b16[w] = table.inbound_wb[fr[w]]
        nb = np.flatnonzero(~w)
        if len(nb):
            b16[nb], table.mix_up_hist[fr[nb]] = up2(buf[sel[nb]], table.mix_up_hist[fr[nb]])
        b16[~present[sel]] = 0
        wconfs = np.flatnonzero(conf_wide)
        sub_conf = np.searchsorted(wconfs, self._conf_of_row[sel])
        sub_starts = np.flatnonzero(np.r_[True, sub_conf[1:] != sub_conf[:-1]])
        overlays16: dict[int, Frame] = {}
        for j, c in enumerate(wconfs.tolist()):
            if c in overlays:
                frame = self._mixed[c].overlay16()
                if frame is not None:
                    overlays16[j] = frame
        spk = speaking[sel]
        out16, totals16 = mix_conferences(b16, spk, sub_starts, sub_conf,
                                          overlays=overlays16)
        for c, restricted, group in self._audience:
            if not conf_wide[c]:
                continue
            j = int(np.searchsorted(wconfs, c))
            a = int(sub_starts[j])
            b = a + len(restricted)
            mix_with_audience(b16[a:b], spk[a:b], restricted, group, out16[a:b],
                              overlay=overlays16.get(j))
            public = spk[a:b] & (restricted < 0)
            totals16[j] = b16[a:b][public].sum(axis=0, dtype=np.int32)
            if j in overlays16:
                totals16[j] += overlays16[j]
        listens = self._listens[sel]
        to_wide = np.flatnonzero(w & listens)
        table.outbound_wb[fr[to_wide]] = out16[to_wide]
        table.has_outbound_wb[fr[to_wide]] = True
        to_nb = np.flatnonzero(~w & listens)
        if len(to_nb):
            out[sel[to_nb]], table.mix_down_hist[fr[to_nb]] = down2(
                out16[to_nb], table.mix_down_hist[fr[to_nb]])
        return {c: totals16[j] for j, c in enumerate(wconfs.tolist())}

    def _leg_out(self, buf: npt.NDArray[np.int16], speaking: npt.NDArray[np.bool_],
                 totals: npt.NDArray[np.int32], out: npt.NDArray[np.int16]) -> None:
        """Each leg gets its conference's local sum: the total less every leg's frame."""
        legs = self._legs
        confs = self._conf_of_row[legs]
        remote = np.zeros_like(totals)
        np.add.at(remote, confs, buf[legs].astype(np.int32) * speaking[legs, None])
        local = totals[confs] - remote[confs]
        out[legs] = np.clip(local, -32768, 32767)

    def _record(
        self, totals: npt.NDArray[np.int32], now: float,
        wide_totals: dict[int, npt.NDArray[np.int32]],
    ) -> None:
        for rec, c in self._recording:
            if c is None:
                rec.write(None, now)
            else:
                total = wide_totals.get(c)
                if total is None:
                    total = totals[c]
                rec.write(np.clip(total, -32768, 32767).astype(np.int16), now)


def _audience_groups(
    members: list[Member],
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """(restricted, member_group) of one conference's rows for `mix_with_audience`."""
    groups: dict[str, int] = {}
    for m in members:
        for tag in (m.speak_only_to, m.tag):
            if tag and tag not in groups:
                groups[tag] = len(groups)
    restricted = np.array(
        [groups[m.speak_only_to] if m.speak_only_to else -1 for m in members], dtype=np.intp
    )
    group = np.array([groups[m.tag] if m.tag else -1 for m in members], dtype=np.intp)
    return restricted, group
