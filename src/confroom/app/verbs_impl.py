"""The verbs a `CallSession` runs: answer, say, play, pause, hangup, sip:decline, redirect,
gather (in `confroom.app.gather`) and leave.

One coroutine per verb, registered in `VERBS` by name. These are the verbs that need nothing
but the call; verbs built on other services (`conference`, in `confroom.conference.verb`) are
added to a copy of this table by whoever wires those services (`Server`), so `app` never
imports the packages built on it. A verb returns None to let the list continue, or a verb
list that replaces the rest of the list (an empty list ends it).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import numpy as np
import numpy.typing as npt

from confroom.app.gather import run_gather
from confroom.media.fetch import fetch_audio
from confroom.media.sources import (
    SAMPLE_RATE,
    PcmSource,
    SequenceSource,
    SilenceSource,
    load_wav,
)
from confroom.media.tts import synthesize
from confroom.memory import forget_traceback

if TYPE_CHECKING:
    from confroom.app.session import CallSession

logger = logging.getLogger(__name__)

Samples = npt.NDArray[np.int16]
VerbResult = list[dict[str, Any]] | None
VerbImpl = Callable[["CallSession", dict[str, Any]], Awaitable[VerbResult]]

_vendors_logged: set[str] = set()


# ---------------------------------------------------------------------------- helpers


def loop_count(value: Any) -> int:
    """`loop` as a count: 0 means forever ("forever", 0); default 1."""
    if value is None:
        return 1
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("forever", "infinite"):
            return 0
        try:
            value = float(v)
        except ValueError:
            logger.warning("loop %r is not a number or 'forever': playing once", value)
            return 1
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return 1
    n = int(value)
    return 0 if n == 0 else max(n, 1)


def positive_int(value: Any) -> int | None:
    """A whole number > 0 from a number or numeric string (None when absent or unusable)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def seconds(value: Any) -> float | None:
    """A number or numeric string of seconds (None when absent or unusable)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        s = float(value)
    except (TypeError, ValueError):
        return None
    return s if math.isfinite(s) and s >= 0 else None


def local_media_path(url: str, media_dir: Path) -> Path | None:
    """The file a `file://` URL or plain path names, if it is inside `media_dir`."""
    raw = unquote(urlsplit(url).path) if url.lower().startswith("file:") else url
    root = media_dir.resolve()
    candidate = (root / raw).resolve()  # an absolute `raw` replaces `root`
    return candidate if candidate.is_relative_to(root) else None


async def _play_clips(
    s: CallSession, clips: list[Samples], loops: int, timeout: float | None = None
) -> float:
    """Play `clips` in order, `loops` times (0 = until stopped or the call ends); a `timeout`
    stops playback early. Returns the seconds spent playing."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    timed_out = False

    def expire() -> None:
        nonlocal timed_out
        timed_out = True
        s.call.stop_playback()

    handle = loop.call_later(timeout, expire) if timeout is not None else None
    try:
        if len(clips) == 1:
            # One buffer: PcmSource loops it seamlessly (0 = forever).
            await s.play(PcmSource(clips[0], loops))
        else:
            n = 0
            audible = any(len(c) for c in clips)
            while loops == 0 or n < loops:
                n += 1
                source = SequenceSource([PcmSource(c) for c in clips])
                if not await s.play(source) or timed_out or not audible:
                    break
    finally:
        if handle is not None:
            handle.cancel()
    return loop.time() - started


# ---------------------------------------------------------------------------- verbs


async def run_answer(s: CallSession, verb: dict[str, Any]) -> VerbResult:
    await s.call.answer()
    return None


async def run_hangup(s: CallSession, verb: dict[str, Any]) -> VerbResult:
    headers = {str(k): str(v) for k, v in (verb.get("headers") or {}).items()}
    await s.call.hangup(headers or None)
    return []


async def run_decline(s: CallSession, verb: dict[str, Any]) -> VerbResult:
    headers = {str(k): str(v) for k, v in (verb.get("headers") or {}).items()}
    if s.call.answered:
        logger.warning(
            "call_sid=%s: sip:decline on an answered call: hanging up instead", s.call_sid
        )
        await s.call.hangup(headers or None)
    else:
        reason = verb.get("reason")
        await s.call.decline(int(verb["status"]), reason, headers or None)
    return []


async def run_pause(s: CallSession, verb: dict[str, Any]) -> VerbResult:
    length = seconds(verb.get("length")) or 0.0
    if length > 0:
        await s.play(SilenceSource(length))
    return None


async def run_say(s: CallSession, verb: dict[str, Any]) -> VerbResult:
    text = verb.get("text")
    texts = [text] if isinstance(text, str) else list(text or [])
    texts = [t for t in texts if t.strip()]
    if not texts:
        logger.info("call_sid=%s: say without text: nothing to say", s.call_sid)
        return None
    synth = verb.get("synthesizer") or {}
    vendor = synth.get("vendor")
    if vendor and vendor not in _vendors_logged:
        _vendors_logged.add(vendor)
        logger.info("say: TTS vendor %r ignored: confroom uses its offline engine", vendor)
    wanted = synth.get("voice") if isinstance(synth.get("voice"), str) else None
    voices = [v for v in (wanted, s.config.tts_voice) if v]
    clips: list[Samples] = []
    for t in texts:
        clip = await _speak(s, t, voices)
        if s.interrupted:
            return None
        if clip is not None:
            clips.append(clip)
    if clips:
        await _play_clips(s, clips, loop_count(verb.get("loop")))
    return None


async def _speak(s: CallSession, text: str, voices: list[str]) -> Samples | None:
    """Synthesize `text` with the first voice that works (vendor voice names usually mean
    nothing to the offline engine: fall back to the configured voice)."""
    for i, voice in enumerate(dict.fromkeys(voices)):
        try:
            path = await s.guarded(synthesize(text, voice, s.config.media_cache_dir))
            if path is None:
                return None  # interrupted
            return await asyncio.to_thread(load_wav, path)
        except Exception as e:
            more = i + 1 < len(dict.fromkeys(voices))
            log = logger.info if more else logger.error
            log(
                "call_sid=%s: say: cannot synthesize %r with voice %r: %s%s",
                s.call_sid,
                text[:60],
                voice,
                e,
                " (trying the default voice)" if more else "",
            )
    return None


async def _load_url(s: CallSession, url: str) -> Samples | None:
    """Fetch or read one `play` URL as 8 kHz samples (None if refused or failed; logged)."""
    scheme = urlsplit(url).scheme.lower()
    try:
        if scheme in ("http", "https"):
            http = s.http or s.hooks.http_session()
            path = await s.guarded(fetch_audio(url, s.config.media_cache_dir, session=http))
            if path is None:
                return None
            return await asyncio.to_thread(load_wav, path)
        if scheme not in ("", "file"):
            logger.error("call_sid=%s: play: unsupported URL %s", s.call_sid, url)
            return None
        local = local_media_path(url, s.config.media_dir)
        if local is None:
            logger.error(
                "call_sid=%s: play: path %s is outside the media directory %s",
                s.call_sid,
                url,
                s.config.media_dir,
            )
            return None
        return await asyncio.to_thread(load_wav, local)
    except Exception as e:
        logger.error("call_sid=%s: play: cannot load %s: %s", s.call_sid, url, e)
        forget_traceback(e)  # the guarded task holds it: no cycle through its frames
        return None


async def run_play(s: CallSession, verb: dict[str, Any]) -> VerbResult:
    url = verb["url"]
    urls: list[str] = [url] if isinstance(url, str) else list(url)
    clips: list[Samples] = []
    for u in urls:
        clip = await _load_url(s, u)
        if s.interrupted:
            return None
        if clip is not None:
            clips.append(clip)
    seek = seconds(verb.get("seekOffset"))
    if clips and seek:
        clips[0] = clips[0][int(seek * SAMPLE_RATE) :]
    played = 0.0
    if clips:
        timeout = seconds(verb.get("timeoutSecs"))
        played = await _play_clips(s, clips, loop_count(verb.get("loop")), timeout or None)
    if "actionHook" not in verb or s.interrupted:
        return None
    extra: dict[str, Any]
    if clips:
        ms = int(played * 1000)
        extra = {
            "reason": "playCompleted",
            "playback_seconds": int(played),
            "playback_milliseconds": ms,
            "playback_last_offset_pos": str(ms * SAMPLE_RATE // 1000),
        }
    else:
        extra = {"reason": "playFailed", "status": "fail"}
    verbs = await s.call_hook(verb["actionHook"], s.fields(**extra), what="play actionHook")
    return verbs or None


async def run_redirect(s: CallSession, verb: dict[str, Any]) -> VerbResult:
    verbs = await s.call_hook(verb["actionHook"], s.fields(), what="redirect actionHook")
    if verbs is None and not s.interrupted:
        logger.error("call_sid=%s: redirect failed: ending the call", s.call_sid)
    return verbs if verbs is not None else []


async def run_leave(s: CallSession, verb: dict[str, Any]) -> VerbResult:
    """Leave the conference the call is in (the conference verb then runs its actionHook with
    conference_result `left`); outside a conference there is nothing to leave."""
    leave = s.leave_conference
    if leave is None:
        logger.info("call_sid=%s: leave: the call is not in a conference", s.call_sid)
    else:
        leave()
    return None


VERBS: dict[str, VerbImpl] = {
    "answer": run_answer,
    "say": run_say,
    "play": run_play,
    "pause": run_pause,
    "hangup": run_hangup,
    "sip:decline": run_decline,
    "redirect": run_redirect,
    "gather": run_gather,
    "leave": run_leave,
}
