"""`SphinxRecognizer`: offline speech recognition with pocketsphinx (vendor `default`).

pocketsphinx's PyPI wheel ships a US English acoustic model, dictionary and language model,
so nothing is downloaded at run time. The model is 16 kHz: the call's 8 kHz audio is
upsampled (linear interpolation: its gentle roll-off towards 4 kHz decoded espeak-ng words
better than a brick-wall FFT upsampler) first, and the decoder's noise removal is off (the
silence around an utterance from G.711 is digital zero, which its noise estimate handles
badly: "sales"/"support" at some levels gave no result with it on). With `hints`,
recognition is restricted to a JSGF grammar of the hint words and phrases (those whose words
are all in the dictionary; others are logged and dropped), which is what makes short answers
("sales", "support") work; without hints the bundled language model decodes free speech
(poorly for short words: bench/speech_micro.py).

The decoder takes ~0.3 s to load and ~10-250 ms per utterance, so it is created once and
used from one worker thread (pocketsphinx decoders are not thread-safe); `recognize` awaits
that thread, never blocking the event loop or the media clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from confroom.speech.recognizer import Alternative, Samples, Transcript

log = logging.getLogger("confroom.speech")

LANGUAGE = "en-US"
_MAX_GRAMMARS = 64  # distinct hint sets kept in the decoder before it is rebuilt
_WORD = re.compile(r"[a-z']+")


def upsample_2x(pcm: Samples) -> Samples:
    """8 kHz -> 16 kHz by linear interpolation."""
    out = np.empty(2 * len(pcm), dtype=np.int16)
    out[0::2] = pcm
    wide = pcm.astype(np.int32)
    out[1:-1:2] = (wide[:-1] + wide[1:]) // 2
    if len(pcm):
        out[-1] = pcm[-1]
    return out


class SphinxRecognizer:
    """See the module docstring."""

    vendor = "default"

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pocketsphinx")
        self._decoder: Any = None
        self._grammars: dict[str, str] = {}  # grammar text digest -> search name
        self._warned_languages: set[str] = set()

    async def recognize(
        self, pcm: Samples, *, language: str, hints: Sequence[str]
    ) -> Transcript | None:
        if language.lower() not in ("en-us", "en") and language not in self._warned_languages:
            self._warned_languages.add(language)
            log.warning("speech: language %r is not available offline: using en-US", language)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._decode, pcm, list(hints))

    # --- the worker thread ------------------------------------------------------------------

    def _get_decoder(self) -> Any:
        if self._decoder is None or len(self._grammars) >= _MAX_GRAMMARS:
            from pocketsphinx import Decoder

            self._decoder = Decoder(samprate=16000, remove_noise=False, loglevel="FATAL")
            self._grammars = {}
        return self._decoder

    def _grammar_search(self, decoder: Any, hints: list[str]) -> str | None:
        phrases: list[str] = []
        for hint in hints:
            words = _WORD.findall(hint.lower())
            if words and all(decoder.lookup_word(w) for w in words):
                phrases.append(" ".join(words))
            else:
                log.info("speech: hint %r has words outside the offline dictionary: ignored",
                         hint)
        phrases = list(dict.fromkeys(phrases))
        if not phrases:
            return None
        text = ("#JSGF V1.0;\ngrammar hints;\npublic <hints> = "
                + " | ".join(phrases) + " ;\n")
        digest = hashlib.sha1(text.encode()).hexdigest()[:16]
        name = self._grammars.get(digest)
        if name is None:
            name = f"hints_{digest}"
            decoder.add_jsgf_string(name, text.encode())
            self._grammars[digest] = name
        return name

    def _decode(self, pcm: Samples, hints: list[str]) -> Transcript | None:
        decoder = self._get_decoder()
        search = self._grammar_search(decoder, hints) if hints else None
        decoder.activate_search(search if search is not None else "_default")
        # pad with silence: the decoder needs some before and after a short word
        pad = np.zeros(4000, dtype=np.int16)
        audio = upsample_2x(np.concatenate([pad, pcm, pad]))
        decoder.start_utt()
        decoder.process_raw(audio.tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        text = hyp.hypstr.strip() if hyp is not None else ""
        if not text:
            return None
        confidence = float(min(max(hyp.prob, 0.0), 1.0))
        return Transcript([Alternative(text, confidence)], LANGUAGE, self.vendor)
