"""Wideband media: the codec module (G.722, Opus: round trips, FEC/PLC), the 8<->16 kHz
resampler, the Opus packet buffer, and conferences of mixed codecs through a hand-driven
`MediaEngine` + `MixBus` (what each leg sent is decoded with the codec module and checked by
FFT: wideband legs hear each other's full band, narrowband legs hear it band-limited, nobody
hears itself)."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from confroom.app.payload import CallInfo
from confroom.conference.audio import ConferenceAudio, MixBus
from confroom.conference.model import Member
from confroom.config import AppConfig
from confroom.media import g711
from confroom.media.bridge import Bridges
from confroom.media.codecs import CODECS, OpusConfig, codec_info, make_decoder, make_encoder
from confroom.media.codecs.opus import OpusDecoder
from confroom.media.engine import MediaEngine
from confroom.media.resample import DOWN_HISTORY, UP_HISTORY, down2, up2
from confroom.media.session import MediaSession
from confroom.media.sources import ToneSource
from confroom.media.wideband import OpusJitter

Pcm = npt.NDArray[np.int16]
PT = {"PCMU": 0, "PCMA": 8, "G722": 9, "OPUS": 111}


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.3) -> Pcm:
    t = np.arange(int(seconds * rate)) / rate
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def level_db(pcm: npt.ArrayLike, freq: float, rate: int, width: float = 60.0) -> float:
    """Power within +-width Hz of freq, in dB relative to a full-scale sine."""
    x = np.asarray(pcm, dtype=np.float64)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / rate)
    band = spec[(f > freq - width) & (f < freq + width)].sum()
    full = (len(x) * 32767 / 4) ** 2 * 1.5 / 2  # a full-scale sine through the Hann window
    return float(10 * np.log10(band / full + 1e-20))


# ------------------------------------------------------------------------------ codecs


@pytest.mark.parametrize("codec", ["G722", "OPUS"])
def test_wideband_codec_round_trip_keeps_6khz(codec: str) -> None:
    enc, dec = make_encoder(codec), make_decoder(codec)
    x = tone(6000, 1.0, 16000)
    out = [dec.decode(enc.encode(x[i:i + 320])) for i in range(0, len(x), 320)]
    assert all(f is not None and f.shape == (320,) for f in out)
    y = np.concatenate([f for f in out if f is not None])[1600:]
    assert level_db(y, 6000, 16000) > -16  # a -10 dBFS tone stays near its level
    sizes = {len(enc.encode(x[:320]))}
    if codec == "G722":
        assert sizes == {160}


def test_g711_wrapper_matches_tables() -> None:
    x = tone(1000, 0.02, 8000)
    for codec in ("PCMU", "PCMA"):
        payload = make_encoder(codec).encode(x)
        assert payload == g711.encode(codec, x).tobytes()
        out = make_decoder(codec).decode(payload)
        assert out is not None and np.array_equal(out, g711.decode(codec, g711.encode(codec, x)))
        assert make_decoder(codec).decode(None) is None


def test_codec_registry_and_rtp_clocks() -> None:
    assert codec_info("g722").rtp_clock == 8000 and codec_info("G722").audio_rate == 16000
    assert codec_info("opus").ts_per_frame == 960 and CODECS["PCMU"].ts_per_frame == 160
    with pytest.raises(ValueError, match="unsupported codec"):
        codec_info("G729")
    with pytest.raises(ValueError, match="complexity"):
        OpusConfig(complexity=11).validate()


def buzz(seconds: float, rate: int = 16000) -> Pcm:
    """Speech-like: a 120 Hz pulse train through three formants, syllable-modulated."""
    n = int(seconds * rate)
    src = np.zeros(n)
    src[:: rate // 120] = 1.0
    src += 0.05 * np.random.default_rng(1).standard_normal(n)
    t = np.arange(400) / rate
    h = np.exp(-t * 300) * (np.sin(2 * np.pi * 700 * t) + 0.6 * np.sin(2 * np.pi * 1200 * t)
                            + 0.3 * np.sin(2 * np.pi * 2500 * t))
    x = np.convolve(src, h)[:n] * (0.55 + 0.45 * np.sin(2 * np.pi * 3 * np.arange(n) / rate))
    return np.round(x / np.abs(x).max() * 12000).astype(np.int16)


def test_opus_fec_beats_plc_for_lost_frames() -> None:
    """Lost frames rebuilt from the next packet's in-band FEC data are closer to what the
    decoder would have played than libopus's PLC guess (speech-like input; each of 30 frames
    lost on its own)."""
    x = buzz(2.0)
    enc = make_encoder("OPUS", OpusConfig(packet_loss_perc=20))
    packets = [enc.encode(x[i:i + 320]) for i in range(0, len(x), 320)]
    ref = OpusDecoder()
    played = [ref.decode(p) for p in packets]
    errors = {True: 0.0, False: 0.0}
    for lost in range(40, 70):
        for use_fec in (True, False):
            dec = OpusDecoder()
            for p in packets[:lost]:
                dec.decode(p)
            frame = dec.decode(None, packets[lost + 1] if use_fec else None)
            assert frame is not None and played[lost] is not None
            errors[use_fec] += float(np.mean((frame.astype(float) - played[lost]) ** 2))
        assert dec.plc_frames == 1
    assert errors[True] < 0.5 * errors[False], errors


# --------------------------------------------------------------------------- resampler


def test_resampler_pass_band_stop_band_and_seamless_streaming() -> None:
    def stream(fn: Any, x: Pcm, size: int, hist: int) -> Pcm:
        h = np.zeros((1, hist), dtype=np.int16)
        out = []
        for i in range(0, len(x), size):
            y, h = fn(x[None, i:i + size], h)
            out.append(y[0])
        return np.concatenate(out)

    ref = level_db(tone(1000, 0.45, 8000), 1000, 8000)  # the input tone's level
    # 16 -> 8 kHz: 1 kHz and 3.4 kHz pass, 6 kHz (which would alias to 2 kHz) is gone
    for f, lo, hi in ((1000, -0.5, 0.5), (3400, -1.5, 0.5), (6000, -300, -70)):
        y = stream(down2, tone(f, 0.5, 16000), 320, DOWN_HISTORY)[400:]
        assert lo < level_db(y, f if f < 4000 else 8000 - f, 8000) - ref < hi, f
    # 8 -> 16 kHz: 1 kHz passes, its image at 7 kHz is far below
    y = stream(up2, tone(1000, 0.5, 8000), 160, UP_HISTORY)[800:]
    ref16 = level_db(tone(1000, 0.45, 16000), 1000, 16000)
    assert -0.5 < level_db(y, 1000, 16000) - ref16 < 0.5
    assert level_db(y, 7000, 16000) - ref16 < -70
    # frame by frame equals all at once (the history joins the frames)
    x = tone(700, 0.2, 8000)
    whole, _ = up2(x[None, :], np.zeros((1, UP_HISTORY), dtype=np.int16))
    assert np.array_equal(stream(up2, x, 160, UP_HISTORY), whole[0])


# ------------------------------------------------------------------------- Opus buffer


def test_opus_jitter_orders_waits_conceals_with_fec_and_rebases() -> None:
    jb = OpusJitter(depth=2)
    assert jb.pop() is None
    # frames 0..5 arrive at once and out of order, frame 3 never
    for k in (1, 0, 2, 4, 5):
        jb.push(k * 960, b"%d" % k, 7)
    played = [jb.pop() for _ in range(6)]
    assert played == [(b"0", None), (b"1", None), (b"2", None),
                      (None, b"4"),  # frame 3 lost: rebuilt from frame 4's FEC data
                      (b"4", None), (b"5", None)]
    jb.push(3 * 960, b"3", 7)  # late: dropped
    assert jb.dropped == 1
    for _ in range(3):  # nothing more: PLC for 3 frames, then an underrun
        assert jb.pop() == (None, None)
    assert jb.pop() is None
    assert jb.target > 2  # the underrun raised it
    played = []
    for k in range(8):  # the next talk spurt, one packet per tick: re-based on its start
        jb.push((100 + k) * 960, b"x%d" % k, 7)
        played.append(jb.pop())
    waited = played.index((b"x0", None))
    assert waited >= 2 and played[waited:] == [(b"x%d" % i, None) for i in range(8 - waited)]
    jb.push(5, b"other", 8)  # a new SSRC restarts (at the starting target, 2)
    jb.push(965, b"other2", 8)
    assert jb.target == 2 and jb.pop() == (b"other", None)


def test_opus_jitter_depth_follows_the_jitter_and_moves_only_in_pauses() -> None:
    """Packets with 0-80 ms of random delay: the target grows to cover it, and the buffer
    deepens only on quiet ticks; a clean stream afterwards lets it shrink, again only when
    quiet. Nothing is lost once the depth has grown."""
    import random
    rng = random.Random(5)
    jb = OpusJitter(depth=2)
    arrivals: dict[int, list[int]] = {}
    for k in range(1500):  # frame k is sent at tick k and arrives 0-4 ticks later
        arrivals.setdefault(k + rng.randint(0, 4), []).append(k)
    lost_late = []
    for tick in range(1505):
        for k in arrivals.get(tick, []):
            jb.push(k * 960, b"p%d" % k, 1)
        jb.quiet = (tick // 100) % 2 == 1  # pauses every other second
        before = jb.grown
        got = jb.pop()
        if jb.grown > before:
            assert jb.quiet  # held only in a pause
        if tick > 700 and got is not None and got[0] is None:
            lost_late.append(tick)
    assert jb.target >= 4 and jb.grown >= 2
    assert lost_late == []


# ------------------------------------------------------------------ engine + conference


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append(data)


APP = AppConfig(name="t", call_hook=None, verbs_file=None)  # type: ignore[call-arg]


def _member(sid: str, media: MediaSession) -> Member:
    info = CallInfo(call_sid=sid, call_id=f"{sid}@t", from_user=sid, to_user="1000",
                    caller_name="", originating_sip_ip="127.0.0.1", originating_sip_port=5070,
                    local_sip_address="127.0.0.1:5060", account_sid="acct",
                    application_sid="app")
    return Member(call_sid=sid, info=info, media=media, app=APP)


class Leg:
    """One conference member: a session on the engine, its sender and what it was sent."""

    def __init__(self, engine: MediaEngine, port: int, codec: str) -> None:
        self.codec = codec
        self.info = codec_info(codec)
        self.session = MediaSession(port)
        self.session.update(codec, PT[codec], 101, "10.0.0.9", port + 1000)
        self.transport = FakeTransport()
        engine.add_session(self.session, self.transport)
        self.encoder = make_encoder(codec)
        self.seq = 0
        self.ts = 1000

    def send(self, pcm: Pcm, now: float) -> None:
        payload = self.encoder.encode(pcm)
        pkt = struct.pack("!BBHII", 0x80, PT[self.codec], self.seq, self.ts, 1234) + payload
        self.seq += 1
        self.ts += self.info.ts_per_frame
        assert self.session.on_datagram(pkt, ("10.0.0.9", self.session.local_port + 1000), now)

    def heard(self, skip: int = 25) -> tuple[Pcm, int]:
        """What was sent to this leg, decoded with the codec module (after `skip` packets)."""
        dec = make_decoder(self.codec)
        frames = []
        last_ts = None
        for data in self.transport.sent:
            b1, ts = data[1] & 0x7F, struct.unpack("!I", data[4:8])[0]
            assert b1 == PT[self.codec]
            if last_ts is not None:
                assert (ts - last_ts) & 0xFFFFFFFF == self.info.ts_per_frame
            last_ts = ts
            frame = dec.decode(data[12:])
            assert frame is not None
            frames.append(frame)
        return np.concatenate(frames[skip:]), self.info.audio_rate


def conference(codecs: list[str]) -> tuple[MediaEngine, list[Leg], ConferenceAudio]:
    engine = MediaEngine("127.0.0.1", 42000, 42100, 0)
    bus = MixBus()
    engine.mixers.append(bus)
    audio = ConferenceAudio(lambda m, t: None)
    bus.attach(audio)
    legs = [Leg(engine, 42000 + 2 * i, c) for i, c in enumerate(codecs)]
    for i, leg in enumerate(legs):
        audio.add(_member(f"m{i}", leg.session))
    return engine, legs, audio


def run(engine: MediaEngine, legs: list[Leg], signals: dict[int, Pcm], seconds: float) -> None:
    now = 100.0
    for k in range(int(seconds * 50)):
        for i, leg in enumerate(legs):
            rate = leg.info.audio_rate
            n = rate // 50
            sig = signals.get(i)
            frame = (sig[k * n:(k + 1) * n] if sig is not None
                     else np.zeros(n, dtype=np.int16))
            leg.send(frame, now)
        engine.tick(now)
        now += 0.02


def test_wideband_members_hear_full_band_narrowband_member_hears_it_band_limited() -> None:
    engine, legs, _ = conference(["G722", "OPUS", "PCMU"])
    talker = tone(6000, 2, 16000, 0.2) + tone(1000, 2, 16000, 0.2)
    run(engine, legs, {0: talker}, 2.0)
    opus, rate = legs[1].heard()
    assert level_db(opus, 6000, rate) > -25 and level_db(opus, 1000, rate) > -25
    pcmu, rate = legs[2].heard()
    assert rate == 8000
    assert level_db(pcmu, 1000, rate) > -25  # the in-band part
    assert level_db(pcmu, 2000, rate) < -60  # no 6 kHz alias
    # the talker does not hear itself
    own, rate = legs[0].heard()
    assert level_db(own, 6000, rate) < -50 and level_db(own, 1000, rate) < -50


def test_mixed_codec_conference_of_four_everyone_hears_everyone_else() -> None:
    codecs = ["PCMU", "PCMA", "G722", "OPUS"]
    freqs = [500.0, 900.0, 1300.0, 1700.0]
    engine, legs, _ = conference(codecs)
    signals = {i: tone(f, 2.5, legs[i].info.audio_rate, 0.15) for i, f in enumerate(freqs)}
    run(engine, legs, signals, 2.5)
    for i, leg in enumerate(legs):
        pcm, rate = leg.heard()
        for j, f in enumerate(freqs):
            level = level_db(pcm, f, rate)
            if i == j:
                assert level < -45, (codecs[i], "hears itself", level)
            else:
                assert level > -30, (codecs[i], "does not hear", codecs[j], level)


def test_codec_change_mid_call_and_prompt_to_a_wideband_leg() -> None:
    engine, legs, _ = conference(["PCMU", "PCMU"])
    run(engine, legs, {0: tone(800, 0.6, 8000)}, 0.6)
    pcm, _ = legs[1].heard()
    assert level_db(pcm, 800, 8000) > -25
    # leg 1 switches to G.722 (a re-INVITE): the conference goes wideband, it hears leg 0
    legs[1].session.update("G722", 9, 101, "10.0.0.9", legs[1].session.local_port + 1000)
    legs[1].codec, legs[1].info, legs[1].encoder = "G722", codec_info("G722"), make_encoder("G722")
    legs[1].transport.sent.clear()
    run(engine, legs, {0: tone(800, 1.0, 8000)}, 1.0)
    pcm, rate = legs[1].heard()
    assert rate == 16000 and level_db(pcm, 800, 16000) > -25
    # a prompt (8 kHz source) played to the wideband leg goes out resampled
    legs[1].transport.sent.clear()
    legs[1].session.play(ToneSource([440.0], 1.0))
    run(engine, legs, {}, 1.0)
    pcm, rate = legs[1].heard(skip=5)
    assert level_db(pcm, 440, rate) > -30


def test_bridge_between_codecs_full_band_only_between_wideband_legs() -> None:
    """`dial` bridges: G.722 <-> Opus carries 6 kHz; G.722 -> PCMU carries 1 kHz only."""
    engine = MediaEngine("127.0.0.1", 43000, 43100, 0)
    bridges = Bridges(engine.frames)
    engine.mixers.append(bridges)
    legs = [Leg(engine, 43000 + 2 * i, c) for i, c in enumerate(["G722", "OPUS", "G722", "PCMU"])]
    bridges.add(legs[0].session, legs[1].session)
    bridges.add(legs[2].session, legs[3].session)
    talk = tone(6000, 1.5, 16000, 0.2) + tone(1000, 1.5, 16000, 0.2)
    run(engine, legs, {0: talk, 2: talk}, 1.5)
    opus, rate = legs[1].heard()
    assert level_db(opus, 6000, rate) > -25 and level_db(opus, 1000, rate) > -25
    pcmu, rate = legs[3].heard()
    assert level_db(pcmu, 1000, rate) > -25 and level_db(pcmu, 2000, rate) < -60


def test_telephone_events_of_an_opus_leg_run_on_its_48khz_clock() -> None:
    engine = MediaEngine("127.0.0.1", 44000, 44100, 0)
    leg = Leg(engine, 44000, "OPUS")
    leg.session.update("OPUS", 111, 110, "10.0.0.9", 45000)
    assert leg.session.send_dtmf("5")
    now = 100.0
    for _ in range(12):
        engine.tick(now)
        now += 0.02
    events = [p for p in leg.transport.sent if p[1] & 0x7F == 110]
    audio = [p for p in leg.transport.sent if p[1] & 0x7F == 111]
    durations = [struct.unpack("!H", p[14:16])[0] for p in events]
    assert durations[:3] == [960, 1920, 2880] and durations[-1] == 8 * 960
    first_audio_ts = struct.unpack("!I", audio[0][4:8])[0]
    event_ts = struct.unpack("!I", events[0][4:8])[0]
    assert (first_audio_ts - event_ts) & 0xFFFFFFFF == 8 * 960  # audio goes on after 8 ticks


def test_recording_of_a_wideband_conference_is_16khz(tmp_path: Any) -> None:
    import wave

    from confroom.conference.recorder import MixRecorder
    engine, legs, audio = conference(["G722", "PCMU"])
    audio.recorder = MixRecorder.open(tmp_path / "r.wav")
    run(engine, legs, {0: tone(6000, 1.0, 16000, 0.2) + tone(1000, 1.0, 16000, 0.2)}, 1.0)
    audio.stop_recording()
    with wave.open(str(tmp_path / "r.wav")) as w:
        assert w.getframerate() == 16000
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert level_db(pcm[3200:], 6000, 16000) > -25


def test_source_guard_follows_an_opus_stream_on_its_48khz_clock() -> None:
    """A NAT re-binding of an Opus call: the same stream 0.5 s later (24,000 RTP units at
    48 kHz) from a new address is accepted; a timestamp 2 s ahead is not."""
    from confroom.media.latch import Verdict
    s = MediaSession(46000)
    s.update("OPUS", 111, 110, "10.0.0.9", 47000)
    g = s.guard
    assert g.check(("10.0.0.9", 47000), 77, 100, 1000, 10.0) is not Verdict.REJECTED
    assert g.check(("10.0.0.10", 5555), 77, 125, 1000 + 24000, 10.5) is Verdict.CHANGED
    assert g.check(("10.0.0.11", 6666), 77, 126, 1000 + 24000 + 96000, 10.52) is (
        Verdict.REJECTED)


def test_g722_pauses_come_from_the_decoded_audio_not_the_bytes() -> None:
    """The jitter buffer reads pauses from G.711 codes; for G.722 the engine tells it
    (`pause_hint`) from the frames it decoded: a tone is no pause, silence is."""
    engine, legs, _ = conference(["G722", "PCMU"])
    bank, stream = engine.jitter, legs[0].session.jitter.index
    assert bank.pause_hint[stream] == 0 and bank.pause_hint[legs[1].session.jitter.index] == -1
    run(engine, legs, {0: tone(1000, 0.4, 16000, 0.2)}, 0.4)
    assert bank.pause_hint[stream] == 0
    run(engine, legs, {}, 0.4)  # silence
    assert bank.pause_hint[stream] == 1
    # with a hint, the bytes do not matter: a slot of 0xFF (G.711 silence) is no pause at 0
    k, slot = np.array([stream]), np.array([0])
    bank.ring[stream, 0] = 0xFF
    bank.filled[stream, 0] = 160
    for hint, pause in ((-1, True), (0, False), (1, True)):
        bank.pause_hint[stream] = hint
        assert bool(bank._quiet(k, slot)[0]) is pause
