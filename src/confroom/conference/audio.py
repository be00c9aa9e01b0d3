"""`ConferenceAudio`: one conference's mix on the media clock.

Registered with the `MediaEngine` as a mixer while the conference lives. Each tick it copies
its mixed members' decoded frames into one (n, 160) buffer, runs talk detection over the
members heard this tick, mixes everyone's N-1 audio in one batched call (muted and held
members are not summed; `speakOnlyTo` restricts who hears a member) and hands each listening
member its row as `mix_out`. Beeps are overlays added to everyone's output. When the conference
records, the recorder gets one frame per tick: what a silent listener without a tag hears (the
clipped sum of every unmuted, not held, unrestricted member), silence while nobody is mixed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from confroom.conference.model import Member
from confroom.conference.recorder import MixRecorder
from confroom.media.mixer import ConferenceMixer, beep_frames
from confroom.media.talk import TalkDetector

_BEEP = beep_frames()


class ConferenceAudio:
    def __init__(self, on_talking: Callable[[Member, bool], None]) -> None:
        self._on_talking = on_talking
        self._mixer = ConferenceMixer()
        self._talk = TalkDetector()
        self._members: list[Member] = []
        self._slots: dict[int, int] = {}  # member_id -> talk-detector slot (small, reused)
        self._free_slots: list[int] = []
        self._flags_dirty = True
        self._speak_ok = np.zeros(0, dtype=bool)
        self._listens = np.zeros(0, dtype=bool)
        self._slot_ids = np.zeros(0, dtype=np.intp)
        self._restricted: npt.NDArray[np.intp] | None = None
        self._group: npt.NDArray[np.intp] | None = None
        self.recorder: MixRecorder | None = None

    # ---- membership -------------------------------------------------------------------

    def add(self, member: Member) -> None:
        self._members.append(member)
        slot = self._free_slots.pop() if self._free_slots else len(self._slots)
        self._slots[member.member_id] = slot
        self._flags_dirty = True

    def remove(self, member: Member) -> None:
        if member in self._members:
            self._members.remove(member)
            slot = self._slots.pop(member.member_id)
            self._talk.remove(slot)
            self._free_slots.append(slot)
            member.media.mix_out = None
            self._flags_dirty = True

    def flags_changed(self) -> None:
        """Call after changing a member's muted / on_hold / tag / speak_only_to."""
        self._flags_dirty = True

    def stop_recording(self) -> MixRecorder | None:
        """Finish the recording (if any) and return its recorder."""
        rec, self.recorder = self.recorder, None
        if rec is not None:
            rec.close()
        return rec

    def beep(self) -> None:
        self._mixer.play_overlay(_BEEP)

    @property
    def members(self) -> list[Member]:
        return list(self._members)

    # ---- the tick -----------------------------------------------------------------------

    def _rebuild_flags(self) -> None:
        ms = self._members
        self._speak_ok = np.array([not (m.muted or m.on_hold) for m in ms], dtype=bool)
        self._listens = np.array([not m.on_hold for m in ms], dtype=bool)
        self._slot_ids = np.array([self._slots[m.member_id] for m in ms], dtype=np.intp)
        if any(m.speak_only_to for m in ms):
            groups: dict[str, int] = {}
            for m in ms:
                for tag in (m.speak_only_to, m.tag):
                    if tag and tag not in groups:
                        groups[tag] = len(groups)
            self._restricted = np.array(
                [groups[m.speak_only_to] if m.speak_only_to else -1 for m in ms], dtype=np.intp
            )
            self._group = np.array([groups[m.tag] if m.tag else -1 for m in ms], dtype=np.intp)
        else:
            self._restricted = self._group = None
        self._flags_dirty = False

    def _listener_mix(self, buf: npt.NDArray[np.int16], speaking: npt.NDArray[np.bool_]) -> (
        npt.NDArray[np.int16] | None
    ):
        heard = speaking if self._restricted is None else speaking & (self._restricted < 0)
        rows = np.flatnonzero(heard)
        if rows.size == 0:
            return None
        total = buf[rows].sum(axis=0, dtype=np.int32)
        np.clip(total, -32768, 32767, out=total)
        frame: npt.NDArray[np.int16] = total.astype(np.int16)
        return frame

    def mix(self, now: float) -> None:
        ms = self._members
        n = len(ms)
        if n == 0:
            if self.recorder is not None:
                self.recorder.write(None, now)
            return
        if self._flags_dirty:
            self._rebuild_flags()
        buf = self._mixer.inbound(n)
        present = np.zeros(n, dtype=bool)
        for i, m in enumerate(ms):
            frame = m.media.inbound
            if frame is None:
                buf[i] = 0
            else:
                buf[i] = frame
                present[i] = True
        # a held member is neither heard nor reported as talking
        detect = present & self._listens
        if detect.any():
            rows = np.flatnonzero(detect)
            changes = self._talk.update(buf[rows], self._slot_ids[rows], now)
        else:
            changes = self._talk.update(buf[:0], self._slot_ids[:0], now)
        speaking = present & self._speak_ok
        out = self._mixer.mix(n, speaking, self._restricted, self._group)
        if self.recorder is not None:
            self.recorder.write(self._listener_mix(buf, speaking), now)
        listens = self._listens
        for i, m in enumerate(ms):
            if listens[i]:
                m.media.mix_out = out[i]
        if changes:
            by_slot = {self._slots[m.member_id]: m for m in ms}
            for slot, talking in changes:
                member = by_slot.get(slot)
                if member is not None and member.talking != talking:
                    member.talking = talking
                    self._on_talking(member, talking)
