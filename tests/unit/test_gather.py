"""gather: the sans-IO digit collector, the actionHook payload, utterance detection and the
offline recognizer (a real pocketsphinx decode of espeak-ng speech)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from confroom.app.digits import DigitCollector, DigitOptions
from confroom.app.gather import GatherResult, action_payload
from confroom.app.verbs import VerbError, parse_verb_list
from confroom.media.sources import load_wav
from confroom.media.tts import synthesize
from confroom.speech.recognizer import (
    ENDED,
    STARTED,
    Alternative,
    Transcript,
    UtteranceDetector,
    recognizer_for,
)
from toolcheck import require_tool


def collector(**verb: object) -> DigitCollector:
    c = DigitCollector(DigitOptions.from_verb(verb))
    c.start_timer(0.0)
    return c


def test_num_digits_ends_at_once() -> None:
    c = collector(numDigits=3)
    assert c.feed("1", 1.0) is None
    assert c.feed("2", 1.5) is None
    out = c.feed("3", 2.0)
    assert out is not None and (out.reason, out.digits, out.detail) == (
        "dtmfDetected", "123", "num-digits")
    assert c.deadline is None


def test_finish_on_key_is_not_a_digit() -> None:
    c = collector(finishOnKey="#", maxDigits=10)
    for d in "4711":
        assert c.feed(d, 1.0) is None
    out = c.feed("#", 2.0)
    assert out is not None and out.digits == "4711" and out.detail == "terminator"


def test_timeout_without_digits_gives_timeout() -> None:
    c = collector(timeout=5)
    assert c.deadline == 5.0
    assert c.poll(4.99) is None
    out = c.poll(5.0)
    assert out is not None and out.reason == "timeout" and out.digits == ""


def test_default_timeout_is_15_s_and_zero_means_none() -> None:
    assert collector().deadline == 15.0
    assert collector(timeout=0).deadline is None


def test_timeout_with_enough_digits_reports_them() -> None:
    c = collector(timeout=5, minDigits=2, finishOnKey="#")
    c.feed("1", 1.0)
    assert c.poll(6.0) is not None and c.outcome is not None
    assert c.outcome.reason == "timeout"  # 1 digit < minDigits 2
    c = collector(timeout=5, minDigits=2, finishOnKey="#")
    c.feed("1", 1.0)
    c.feed("2", 2.0)
    out = c.poll(5.0)
    assert out is not None and (out.reason, out.digits) == ("dtmfDetected", "12")


def test_inter_digit_timeout_replaces_the_overall_timeout() -> None:
    c = collector(timeout=10, interDigitTimeout=2, minDigits=2, maxDigits=6)
    c.feed("1", 1.0)
    assert c.deadline == 10.0  # fewer than minDigits: overall timer still runs
    c.feed("2", 3.0)
    assert c.deadline == 5.0
    assert c.poll(4.9) is None
    c.feed("3", 4.9)
    assert c.deadline == pytest.approx(6.9)
    out = c.poll(7.0)
    assert out is not None and (out.digits, out.detail) == ("123", "inter-digit-timeout")


def test_first_digit_starts_the_timer_when_the_prompt_still_plays() -> None:
    c = DigitCollector(DigitOptions.from_verb({"timeout": 3}))
    assert c.deadline is None  # prompt playing, listening not started
    c.feed("5", 2.0)
    assert c.deadline == 5.0


def test_bad_attribute_values_fall_back() -> None:
    opts = DigitOptions.from_verb({"numDigits": -1, "finishOnKey": "x", "timeout": "abc"})
    assert opts.num_digits is None and opts.finish_on_key is None and opts.timeout == 15.0


def test_payloads() -> None:
    assert action_payload(GatherResult("dtmfDetected", digits="1234")) == {
        "reason": "dtmfDetected", "digits": "1234"}
    assert action_payload(GatherResult("timeout")) == {"reason": "timeout"}
    t = Transcript([Alternative("sales", 0.81234)], "en-US", "default")
    body = action_payload(GatherResult("speechDetected", speech=t))
    assert body["reason"] == "speechDetected"
    assert body["speech"]["alternatives"] == [{"transcript": "sales", "confidence": 0.8123}]
    assert body["speech"]["is_final"] is True and body["speech"]["language_code"] == "en-US"


def test_gather_and_leave_validate() -> None:
    verbs = parse_verb_list([
        {"verb": "gather", "input": ["digits", "speech"], "numDigits": 4, "finishOnKey": "#",
         "actionHook": "/pin", "say": {"text": "Enter your PIN"},
         "recognizer": {"vendor": "google", "hints": ["sales", "support"]}},
        {"leave": {}},
    ])
    assert [v["verb"] for v in verbs] == ["gather", "leave"]
    with pytest.raises(VerbError, match="numDigits"):
        parse_verb_list([{"verb": "gather", "numDigits": "four"}])


def _frames(pcm: np.ndarray) -> list[np.ndarray]:
    n = len(pcm) // 160 * 160
    return list(pcm[:n].reshape(-1, 160))


async def _speech(tmp_path: Path, text: str) -> np.ndarray:
    require_tool("espeak-ng")
    return load_wav(await synthesize(text, "en-us", tmp_path))


async def test_utterance_detector_finds_one_utterance(tmp_path: Path) -> None:
    pcm = await _speech(tmp_path, "support")
    silence = [None] * 50
    d = UtteranceDetector()
    events = [d.feed(f) for f in [*silence, *_frames(pcm), *silence]]
    assert events.count(STARTED) == 1 and events.count(ENDED) == 1
    utterance = d.take()
    assert utterance is not None and len(utterance) >= len(pcm) // 2
    assert d.take() is None


async def test_recognizer_hears_sales_and_support(tmp_path: Path) -> None:
    rec = recognizer_for("no-such-vendor")  # not configured: the offline default
    assert rec.vendor == "default"
    for word in ("sales", "support"):
        pcm = await _speech(tmp_path, word)
        t = await rec.recognize(pcm, language="en-US", hints=["sales", "support"])
        assert t is not None and t.text == word, (word, t)
        assert 0.0 <= t.alternatives[0].confidence <= 1.0
