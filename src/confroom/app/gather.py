"""The `gather` verb: collect DTMF digits and/or speech, with an optional barge-in prompt.

Flow: the nested `say`/`play` prompt plays (through the session's own verb table) while the
call's digits (`CallControl.dtmf_listener`) and, for speech, its inbound audio (the media
session's `audio_tap`, fed once per tick by the engine) are listened to. Digits go to the
sans-IO `DigitCollector`; audio to the sans-IO `UtteranceDetector`, whose utterances are
recognised by a `Recognizer` off the media clock (awaited in this task). A digit
(`dtmfBargein`, on by default when digits are collected) or the start of speech (`bargein`)
stops the prompt from inside the callback, so its audio stops on the same tick. With
`listenDuringPrompt: false` input is ignored until the prompt ends. The gather ends with
`dtmfDetected`, `speechDetected` or `timeout`; the actionHook gets jambonz's payload (`reason`,
`digits` or `speech`) and the verbs it returns replace the rest of the call's verbs; without an
actionHook (or when it returns none) the call continues with the next verb.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confroom.app.digits import DigitCollector, DigitOptions, Outcome
from confroom.speech.recognizer import (
    ENDED,
    STARTED,
    Recognizer,
    Samples,
    Transcript,
    UtteranceDetector,
    recognizer_for,
)

if TYPE_CHECKING:
    from confroom.app.session import CallSession

logger = logging.getLogger(__name__)

VerbResult = list[dict[str, Any]] | None

# jambonz attributes accepted (the schema allows them) but not acted on; logged once each
IGNORED = ("speechTimeout", "minBargeinWordCount", "partialResultHook", "fillerNoise",
           "actionHookDelayAction")
_ignored_logged: set[str] = set()


@dataclass(frozen=True)
class GatherResult:
    reason: str  # dtmfDetected | speechDetected | timeout
    digits: str = ""
    speech: Transcript | None = None


def action_payload(result: GatherResult) -> dict[str, Any]:
    """The gather-specific fields of the actionHook body (jambonz's names)."""
    if result.reason == "dtmfDetected":
        return {"reason": "dtmfDetected", "digits": result.digits}
    if result.reason == "speechDetected" and result.speech is not None:
        return {"reason": "speechDetected", "speech": result.speech.as_payload()}
    return {"reason": result.reason}


def _hints(recognizer: Any) -> list[str]:
    hints = recognizer.get("hints") if isinstance(recognizer, dict) else None
    out: list[str] = []
    for h in hints or []:
        if isinstance(h, str):
            out.append(h)
        elif isinstance(h, dict) and isinstance(h.get("phrase"), str):
            out.append(h["phrase"])
    return out


class _Gather:
    """The state of one running gather (callbacks in, one future out)."""

    def __init__(self, s: CallSession, verb: dict[str, Any]) -> None:
        self.s = s
        for name in IGNORED:
            if name in verb and name not in _ignored_logged:
                _ignored_logged.add(name)
                logger.info("gather: attribute %r is accepted but not implemented: ignored", name)
        inputs = verb.get("input") or ["digits"]
        self.digits = "digits" in inputs
        self.speech = "speech" in inputs
        self.dtmf_bargein = verb.get("dtmfBargein") is not False and self.digits
        self.bargein = bool(verb.get("bargein", False)) and self.speech
        self.prompt_verb: dict[str, Any] | None = None
        for name in ("say", "play"):
            if isinstance(verb.get(name), dict):
                self.prompt_verb = {**verb[name], "verb": name}
                break
        self.listen_during_prompt = verb.get("listenDuringPrompt") is not False
        self.collector = DigitCollector(DigitOptions.from_verb(verb))
        found = verb.get("recognizer")
        rec: dict[str, Any] = found if isinstance(found, dict) else {}
        self.language = str(rec.get("language") or "en-US")
        self.hints = _hints(rec)
        self.recognizer: Recognizer | None = (
            recognizer_for(rec.get("vendor")) if self.speech else None
        )
        self.detector = UtteranceDetector() if self.speech else None
        self.prompting = False
        self.listening = False
        self.wake = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.result: GatherResult | None = None
        self.recognising = 0
        self.prompt_task: asyncio.Task[None] | None = None

    def finish(self, result: GatherResult) -> None:
        if self.result is None:
            self.result = result
            self.stop_prompt()
            self.wake.set()

    def stop_prompt(self) -> None:
        if self.prompting:
            self.prompting = False
            self.s.call.stop_playback()  # the source is gone before this tick's send step
            if self.prompt_task is not None:
                self.prompt_task.cancel()  # still synthesising or loading: never starts

    # --- callbacks (the media tick or the SIP side; no awaiting) ----------------------------

    def on_digit(self, digit: str) -> None:
        if self.result is not None:
            return
        if self.prompting and not self.listen_during_prompt:
            return
        if self.dtmf_bargein:
            self.stop_prompt()
        if not self.digits:
            return
        out = self.collector.feed(digit, self.loop.time())
        if out is not None:
            self._done_digits(out)
        self.wake.set()

    def on_audio(self, frame: Samples | None) -> None:
        if self.result is not None or self.detector is None:
            return
        if self.prompting and not self.listen_during_prompt:
            return
        event = self.detector.feed(frame)
        if event == STARTED:
            if self.bargein:
                self.stop_prompt()
            self.collector.stop_timer()  # speech: wait for its transcript
        elif event == ENDED:
            self.wake.set()

    def _done_digits(self, out: Outcome) -> None:
        logger.info("gather call_sid=%s digits=%s reason=%s (%s)", self.s.call_sid,
                    out.digits, out.reason, out.detail)
        self.finish(GatherResult(out.reason, digits=out.digits))

    # --- the task -----------------------------------------------------------------------------

    async def recognise(self, pcm: Samples) -> None:
        assert self.recognizer is not None
        self.recognising += 1
        try:
            t0 = self.loop.time()
            transcript = await self.recognizer.recognize(pcm, language=self.language,
                                                         hints=self.hints)
            logger.info("gather call_sid=%s speech=%r (%.2f s of audio, recognised in %.3f s)",
                        self.s.call_sid, transcript.text if transcript else None,
                        len(pcm) / 8000, self.loop.time() - t0)
        except Exception:
            logger.exception("call_sid=%s: gather: speech recognition failed", self.s.call_sid)
            transcript = None
        finally:
            self.recognising -= 1
        if transcript is not None and transcript.text:
            self.finish(GatherResult("speechDetected", speech=transcript))
        elif self.result is None and not (self.detector and self.detector.in_speech):
            self.collector.start_timer(self.loop.time())  # nothing usable: keep listening
            self.wake.set()

    async def run_prompt(self) -> None:
        verb = self.prompt_verb
        assert verb is not None
        impl = self.s.verbs.get(verb["verb"])
        if impl is None:
            return
        self.prompting = True
        try:
            await impl(self.s, verb)
        finally:
            self.prompting = False
        if self.result is None:
            self.listening = True
            self.collector.start_timer(self.loop.time())
            self.wake.set()

    async def run(self) -> GatherResult | None:
        s = self.s
        call = s.call
        if not call.answered:
            await call.answer()
        call.dtmf_listener = self.on_digit
        if self.detector is not None:
            call.media.audio_tap = self.on_audio
        prompt: asyncio.Task[None] | None = None
        pending: set[asyncio.Task[None]] = set()
        try:
            if self.prompt_verb is not None:
                prompt = self.prompt_task = self.loop.create_task(self.run_prompt())
            else:
                self.listening = True
                self.collector.start_timer(self.loop.time())
            while self.result is None and not s.interrupted:
                if self.detector is not None:
                    pcm = self.detector.take()
                    while pcm is not None:
                        task = self.loop.create_task(self.recognise(pcm))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                        pcm = self.detector.take()
                out = self.collector.poll(self.loop.time())
                if out is not None:
                    if out.reason == "timeout" and (self.recognising or (
                            self.detector is not None and self.detector.in_speech)):
                        self.collector = _resume(self.collector)
                    else:
                        self._done_digits(out)
                        break
                deadline = self.collector.deadline
                timeout = None if deadline is None else max(deadline - self.loop.time(), 0.0)
                self.wake.clear()
                await s.guarded(_wait_event(self.wake, timeout))
        finally:
            call.dtmf_listener = None
            if self.detector is not None:
                call.media.audio_tap = None
            self.stop_prompt()
            for task in [*([prompt] if prompt is not None else []), *pending]:
                task.cancel()
            if prompt is not None or pending:
                await asyncio.wait({*pending, *([prompt] if prompt else [])})
        return self.result


def _resume(collector: DigitCollector) -> DigitCollector:
    """A collector whose timeout fired while speech was being recognised: keep its digits,
    no timer (the transcript restarts it)."""
    fresh = DigitCollector(collector.options)
    fresh.digits = collector.digits
    return fresh


async def _wait_event(event: asyncio.Event, timeout: float | None) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


async def run_gather(s: CallSession, verb: dict[str, Any]) -> VerbResult:
    g = _Gather(s, verb)
    result = await g.run()
    if result is None or s.interrupted:
        return None
    if "actionHook" not in verb:
        return None
    body = s.fields(**action_payload(result))
    if isinstance(verb.get("id"), str):
        body["verb_id"] = verb["id"]  # as jambonz sends it
    verbs = await s.call_hook(verb["actionHook"], body, what="gather actionHook")
    return verbs or None
