"""Speech quality through a real conference of 3 (PESQ-NB, ITU-T P.862): loss concealment
and the jitter buffer, measured from outside (see tests/e2e/quality.py and bench/quality.py
for the full table)."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import require_tool
from quality import Impairment, conference_pesq, espeak_speech

pytestmark = pytest.mark.e2e

TEXT = "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."


def test_speech_through_a_conference_with_loss_and_jitter(tmp_path: Path) -> None:
    """G.711 speech with 10 % random loss and 0-60 ms of jitter on the talker's upstream: the
    listener's PESQ-NB is clearly above the same lost packets left silent (offline, the
    concealment gains 0.4-0.7 at 10 % on every loss pattern tried) - so the jitter buffer
    loses nothing more to the jitter, and the concealment works."""
    for tool in ("espeak-ng", "sox", "sipp"):
        require_tool(tool)
    speech = espeak_speech(tmp_path, TEXT)
    heard, silent = conference_pesq(tmp_path / "run", speech, Impairment(0.10, 60.0), seed=3)
    assert heard > silent + 0.25, f"PESQ-NB {heard:.2f}, lost frames left silent {silent:.2f}"
