"""Self-checks of the e2e harness that need no confroom server: G.711 and FFT helpers, RtpPeer,
HookApp, the log-following process wrapper, the TOML writer, and every SIPp UAC scenario
against a SIPp UAS (built-in `-sn uas` or the tests/sipp/selfcheck_uas_*.xml scenarios)."""

from __future__ import annotations

import itertools
import json
import re
import struct
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from harness import (
    ALAW_DECODE,
    HOST,
    ULAW_DECODE,
    ConfroomProcess,
    HookApp,
    Reply,
    RtpPeer,
    SippRunner,
    band_power,
    dominant_frequency,
    free_port_block,
    free_sip_port,
    g711_decode,
    g711_encode,
    loud_frames,
    parse_kv,
    parse_sipp_screen,
    rms,
    scenario_path,
    sign,
    to_toml,
    tone,
    tone_power,
    verify_signature,
    write_tone_wav,
)

# ------------------------------------------------------------------------------- G.711 / DSP


def test_g711_reference_points() -> None:
    assert ULAW_DECODE[0xFF] == 0 and ULAW_DECODE[0x7F] == 0
    assert ULAW_DECODE[0x00] == -32124 and ULAW_DECODE[0x80] == 32124
    assert ALAW_DECODE[0xD5] == 8 and ALAW_DECODE[0x55] == -8
    assert ALAW_DECODE[0xAA] == 32256 and ALAW_DECODE[0x2A] == -32256
    assert g711_encode([0], 0) == b"\xff"
    assert g711_encode([0], 8) == b"\xd5"


@pytest.mark.parametrize("pt", [0, 8])
def test_g711_roundtrip_error_is_small(pt: int) -> None:
    pcm = np.arange(-32768, 32768, 7, dtype=np.int32).astype(np.int16)
    back = g711_decode(g711_encode(pcm, pt), pt).astype(np.int32)
    err = np.abs(back - pcm.astype(np.int32))
    # G.711 quantisation error is below ~3.2 % of the magnitude (plus a small floor)
    assert np.all(err <= np.abs(pcm.astype(np.int32)) * 0.04 + 16)
    # every code decodes and re-encodes to itself (tables are consistent)
    codes = bytes(range(256))
    assert g711_encode(g711_decode(codes, pt), pt) == codes or pt == 0
    if pt == 0:  # mu-law has two zero codes (0x7F and 0xFF); all others must round-trip
        again = g711_encode(g711_decode(codes, pt), pt)
        assert [i for i in range(256) if again[i] != i] == [0x7F]


@pytest.mark.parametrize(("pt", "name"), [(0, "ulaw2lin"), (8, "alaw2lin")])
def test_g711_matches_audioop_when_available(pt: int, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop  # standard library up to Python 3.12
    codes = bytes(range(256))
    ref = np.frombuffer(getattr(audioop, name)(codes, 2), dtype=np.int16)
    assert np.array_equal(g711_decode(codes, pt), ref)
    pcm = np.arange(-32768, 32768, 3, dtype=np.int32).astype(np.int16)
    enc = getattr(audioop, "lin2ulaw" if pt == 0 else "lin2alaw")(pcm.tobytes(), 2)
    assert g711_encode(pcm, pt) == enc


def test_tone_analysis() -> None:
    pcm = tone(440, 1.0)
    assert abs(dominant_frequency(pcm) - 440) < 2
    assert tone_power(pcm, 440) > 0.95
    assert tone_power(pcm, 1000) < 0.01
    assert rms(pcm) == pytest.approx(0.5 * 32767 / np.sqrt(2), rel=0.01)
    assert rms(np.zeros(160, dtype=np.int16)) == 0
    mixed = np.concatenate([np.zeros(800, dtype=np.int16), tone(1000, 0.5), np.zeros(800,
                                                                                    np.int16)])
    assert len(loud_frames(mixed)) == 4000
    assert band_power(tone(1000, 0.5), 300, 3400) > 0.99
    assert abs(dominant_frequency(g711_decode(g711_encode(tone(697, 0.4), 0), 0)) - 697) < 3


def test_write_tone_wav(tmp_path: Path) -> None:
    import wave

    path = write_tone_wav(tmp_path / "t.wav", 440, 0.5)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (
            1, 2, 8000, 4000)
        pcm = np.frombuffer(w.readframes(4000), dtype="<i2")
    assert abs(dominant_frequency(pcm) - 440) < 2


# ------------------------------------------------------------------------------- RtpPeer


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_rtp_peer_tone_between_two_peers(codec: str) -> None:
    with RtpPeer() as a, RtpPeer() as b:
        sent = a.send_tone(440, 1.0, to=b.address, codec=codec)
        assert sent == 50
        pkts = b.wait_packets(50, timeout=5)
        assert {p.payload_type for p in pkts} == {0 if codec == "PCMU" else 8}
        assert {p.source for p in pkts} == {a.address}
        assert pkts[0].marker and not any(p.marker for p in pkts[1:])
        seqs = [p.seq for p in pkts]
        assert all(((y - x) & 0xFFFF) == 1 for x, y in itertools.pairwise(seqs))
        stamps = [p.timestamp for p in pkts]
        assert all(((y - x) & 0xFFFFFFFF) == 160 for x, y in itertools.pairwise(stamps))
        gaps = np.diff([p.arrival for p in pkts])
        assert 0.015 < float(np.median(gaps)) < 0.025  # paced at 20 ms
        assert pkts[-1].arrival - pkts[0].arrival == pytest.approx(0.98, abs=0.1)
        pcm = b.decoded_pcm()
        assert len(pcm) == 8000
        assert abs(dominant_frequency(pcm) - 440) < 10
        assert tone_power(pcm, 440) > 0.9


def test_rtp_peer_async_tone_and_dtmf() -> None:
    with RtpPeer() as a, RtpPeer() as b:
        t = a.send_tone_async(1000, 0.2, b.address)
        b.wait_packets(10, timeout=5, payload_types=[0])
        t.join(5)
        n = a.send_dtmf("5", b.address, duration_ms=100)
        events = b.wait_packets(n, timeout=5, payload_types=[101])
        assert n == 8
        decoded = [struct.unpack("!BBH", p.payload) for p in events]
        assert {d[0] for d in decoded} == {5}
        assert [bool(d[1] & 0x80) for d in decoded] == [False] * 5 + [True] * 3
        assert len({p.timestamp for p in events}) == 1
        assert b.wait_quiet(quiet=0.1, timeout=5)
        assert b.sources() == {a.address}


# ------------------------------------------------------------------------------- HookApp


def _post(url: str, body: object, timeout: float = 5) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def app() -> Iterator[HookApp]:
    a = HookApp().start()
    yield a
    a.close()


def test_hook_app_routes_and_records(app: HookApp) -> None:
    verbs = [{"verb": "say", "text": "hi"}, {"verb": "hangup"}]
    app.route("/call", verbs)
    app.route("/err", 500)
    app.route("/raw", Reply(body="{not json", status=200))
    app.route("/fn", lambda req: [{"verb": "pause", "length": req.json["n"]}])
    status, body = _post(app.url("/call"), {"call_sid": "abc"})
    assert status == 200 and json.loads(body) == verbs
    assert _post(app.url("/err"), {})[0] == 500
    assert _post(app.url("/raw"), {}) == (200, b"{not json")
    assert json.loads(_post(app.url("/fn"), {"n": 3})[1]) == [{"verb": "pause", "length": 3}]
    assert _post(app.url("/nope"), {})[0] == 404
    got = app.wait_requests("/call", 1, timeout=1)
    assert got[0].json == {"call_sid": "abc"} and got[0].method == "POST"
    assert got[0].header("content-type") == "application/json"
    with urllib.request.urlopen(app.url("/call?call_sid=x&from=alice"), timeout=5) as r:
        assert r.status == 200
    get = next(r for r in app.received("/call") if r.method == "GET")
    assert get.query == {"call_sid": "x", "from": "alice"}
    with pytest.raises(AssertionError):
        app.wait_requests("/never", 1, timeout=0.2)


def test_hook_app_delay(app: HookApp) -> None:
    app.route("/slow", Reply(verbs=[], delay=1.0))
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        _post(app.url("/slow"), {}, timeout=0.3)
    assert time.monotonic() - t0 < 0.9
    assert len(app.wait_requests("/slow", 1, timeout=1)) == 1


def test_hook_app_stream(app: HookApp) -> None:
    app.route("/big", Reply(stream=300_000))
    status, body = _post(app.url("/big"), {})
    assert status == 200 and body == b" " * 300_000
    with app._cond:
        assert app._cond.wait_for(lambda: app.streamed == [300_000], timeout=5), app.streamed


def test_signature_roundtrip() -> None:
    raw = b'{"call_sid":"x"}'
    header = sign(raw, "s3cret")
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
    assert verify_signature(header, raw, "s3cret")
    assert not verify_signature(header, raw + b" ", "s3cret")
    assert not verify_signature(header, raw, "other")
    assert not verify_signature(sign(raw, "s3cret", t=int(time.time()) - 3600), raw, "s3cret")
    assert not verify_signature(None, raw, "s3cret")


# ------------------------------------------------------------------------------- process / TOML

FAKE_SERVER = r"""
import signal, sys, time
def bye(*_):
    print("shutting down call_sid=x", file=sys.stderr, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print("INFO confroom ready sip=udp+tcp", file=sys.stderr, flush=True)
for i in range(3):
    print(f"call start call_sid=c{i} call_id=id{i} from=alice to=1000 transport=udp",
          file=sys.stderr, flush=True)
while True:
    signal.pause()
"""


class FakeConfroom(ConfroomProcess):
    def command(self) -> list[str]:
        return [sys.executable, "-c", FAKE_SERVER]


def test_process_wrapper_follows_log_and_stops(tmp_path: Path) -> None:
    srv = FakeConfroom(tmp_path, apps=[{"call_hook": "http://127.0.0.1:1/x"}]).start()
    srv.wait_ready(timeout=10)
    lines = srv.wait_logs(r"call start (.*)", 3, timeout=5)
    assert [parse_kv(m.group(0))["call_id"] for m in lines] == ["id0", "id1", "id2"]
    assert srv.cpu_seconds() >= 0
    mark = srv.mark()
    with pytest.raises(AssertionError, match="timeout"):
        srv.wait_log("never printed", timeout=0.2, since=mark)
    assert srv.stop() == 0
    assert srv.find_logs("shutting down", since=mark)
    with pytest.raises(AssertionError, match="exited"):
        srv.wait_log("never printed", timeout=5)


def test_config_toml_is_accepted_by_confroom_config(tmp_path: Path) -> None:
    srv = ConfroomProcess(
        tmp_path,
        apps=[{"name": "e2e", "call_hook": "http://127.0.0.1:9/call",
               "call_status_hook": "http://127.0.0.1:9/status", "webhook_secret": "s",
               "account_sid": "acc", "application_sid": "app", "numbers": ["*"]}],
        rtp_timeout=5, webhook_timeout=1.0, extra_toml={"tts": {"voice": "en-us"}},
    )
    text = to_toml(srv.config)
    data = tomllib.loads(text)
    assert data["webhooks"]["timeout"] == 1.0 and data["apps"][0]["numbers"] == ["*"]
    assert srv.rtp_hi - srv.rtp_lo + 1 == 400
    from confroom import config
    path = tmp_path / "c.toml"
    path.write_text(text)
    cfg = config.load(path, env={})
    assert cfg.webhook_timeout == 1.0 and cfg.rtp_timeout == 5.0
    assert cfg.media_dir == srv.media_dir and cfg.apps[0].webhook_secret == "s"
    assert cfg.apps[0].call_hook.url == "http://127.0.0.1:9/call"


def test_free_ports() -> None:
    p = free_sip_port()
    assert 1024 < p < 65536
    base = free_port_block(10)
    assert base % 2 == 0 and base + 9 < 32768


def test_screen_parser() -> None:
    screen = ("  Successful call        |        0                  |        7      \n"
              "  Failed call            |        1                  |        2      \n")
    assert parse_sipp_screen(screen) == {"successful": 7, "failed": 2}


# ------------------------------------------------------------------------------- SIPp scenarios

ALL_UAC = ["uac_basic", "uac_wait_bye", "uac_cancel", "uac_cancel_late", "uac_hold",
           "uac_options", "uac_decline", "uac_expect_status", "uac_dtmf"]


def _listening(port: int, proto: str) -> bool:
    hexport = f":{port:04X}"
    for name in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        try:
            rows = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[1].endswith(hexport) and (proto == "udp" or cols[3] == "0A"):
                return True
    return False


class Uas:
    """A SIPp UAS (built-in or selfcheck scenario) for one call on 127.0.0.1:<port>."""

    def __init__(self, tmp: Path, scenario: str, transport: str = "u1",
                 keys: dict[str, object] | None = None) -> None:
        self.port = free_sip_port()
        self.out = tmp / f"uas-{scenario}-{transport}"
        self.out.mkdir(parents=True)
        spec = ["-sn", "uas"] if scenario == "uas" else ["-sf", str(scenario_path(scenario))]
        cmd = ["sipp", *spec, "-i", HOST, "-p", str(self.port), "-t", transport, "-m", "1",
               "-mi", HOST, "-mp", str(free_port_block(4)), "-nostdin",
               "-timeout", "20s", "-timeout_error",
               "-trace_err", "-error_file", str(self.out / "errors.log"),
               "-trace_msg", "-message_file", str(self.out / "messages.log")]
        for k, v in (keys or {}).items():
            cmd += ["-key", k, str(v)]
        self.proc = subprocess.Popen(cmd, cwd=self.out, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        proto = "tcp" if transport.startswith("t") else "udp"
        deadline = time.monotonic() + 10
        while not _listening(self.port, proto):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"UAS {scenario} did not start: {err}")
            time.sleep(0.01)

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=25)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stderr:
                self.proc.stderr.close()

    def messages(self) -> str:
        return (self.out / "messages.log").read_text(errors="replace")


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[SippRunner]:
    from harness import require_tool

    require_tool("sipp")
    r = SippRunner(tmp_path / "uac")
    r.workdir.mkdir()
    yield r
    r.close()


def test_all_scenarios_exist_and_are_xml() -> None:
    import xml.etree.ElementTree as ET

    for name in ALL_UAC:
        root = ET.parse(scenario_path(name)).getroot()
        assert root.tag == "scenario"


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_uac_basic_against_builtin_uas(tmp_path: Path, runner: SippRunner,
                                       transport: str) -> None:
    uas = Uas(tmp_path, "uas", transport)
    res = runner.run("uac_basic", uas.target, transport=transport, pause_ms=200,
                     keys={"rtp_port": 40000}, timeout=15)
    assert res.ok(), res.describe()
    # over TCP the UAS counts the UAC closing its connection at the end as a failed call
    assert uas.wait() == 0 or transport == "t1"
    msgs = uas.messages()
    assert "m=audio 40000 RTP/AVP 0 8 101" in msgs
    assert re.search(r"^From: \"alice\" <sip:alice@", msgs, re.M)
    assert len(res.call_ids) == 1 and res.call_ids[0] in msgs
    # ACK and BYE go to the 200's Contact (the built-in UAS's has no user part)
    assert re.search(r"^ACK sip:127\.0\.0\.1:\d+;transport=", msgs, re.M)
    assert re.search(r"^BYE sip:127\.0\.0\.1:\d+;transport=", msgs, re.M)


def test_uac_basic_fails_when_nobody_answers(tmp_path: Path, runner: SippRunner) -> None:
    res = runner.run("uac_basic", f"{HOST}:{free_sip_port()}", timeout=2, pause_ms=100)
    assert not res.ok()
    assert res.returncode != 0


def test_uac_options(tmp_path: Path, runner: SippRunner) -> None:
    uas = Uas(tmp_path, "selfcheck_uas_options")
    res = runner.run("uac_options", uas.target, timeout=15)
    assert res.ok(), res.describe()
    assert uas.wait() == 0


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_uac_hold(tmp_path: Path, runner: SippRunner, transport: str) -> None:
    uas = Uas(tmp_path, "selfcheck_uas_hold", transport)
    res = runner.run("uac_hold", uas.target, transport=transport, pause_ms=100, timeout=15)
    assert res.ok(), res.describe()
    assert uas.wait() == 0 or transport == "t1"
    msgs = uas.messages()
    assert "a=sendonly" in msgs and "CSeq: 3 INVITE" in msgs and "CSeq: 4 BYE" in msgs


def test_uac_hold_rejects_answer_without_recvonly(tmp_path: Path, runner: SippRunner) -> None:
    # the built-in UAS answers every INVITE the same way: the re-INVITE answer lacks recvonly
    uas = Uas(tmp_path, "uas")
    res = runner.run("uac_hold", uas.target, pause_ms=100, timeout=8)
    assert not res.ok()
    uas.proc.kill()
    uas.wait()


@pytest.mark.parametrize("scenario", ["uac_cancel", "uac_cancel_late"])
def test_uac_cancel(tmp_path: Path, runner: SippRunner, scenario: str) -> None:
    uas = Uas(tmp_path, "selfcheck_uas_cancel")
    res = runner.run(scenario, uas.target, timeout=15)
    assert res.ok(), res.describe()
    if scenario == "uac_cancel_late":  # waited 1 s without provisional responses
        assert res.elapsed > 1.0
    assert uas.wait() == 0
    msgs = uas.messages()
    branches = re.findall(r"^(INVITE|CANCEL|ACK) .*\n(?:.*\n)*?Via: .*branch=(\S+)", msgs, re.M)
    assert {b for _, b in branches} == {branches[0][1]}, branches  # one transaction


def test_uac_wait_bye(tmp_path: Path, runner: SippRunner) -> None:
    uas = Uas(tmp_path, "selfcheck_uas_send_bye")
    res = runner.run("uac_wait_bye", uas.target, timeout=15)
    assert res.ok(), res.describe()
    assert uas.wait() == 0


@pytest.mark.parametrize("scenario", ["uac_expect_status", "uac_decline"])
def test_uac_expect_status(tmp_path: Path, runner: SippRunner, scenario: str) -> None:
    uas = Uas(tmp_path, "selfcheck_uas_status")
    res = runner.run(scenario, uas.target, variables={"expected_status": 486}, timeout=15)
    assert res.ok(), res.describe()
    assert res.final_statuses == [486]
    assert uas.wait() == 0
    assert "ACK sip:" in uas.messages()


def test_uac_expect_status_mismatch_fails(tmp_path: Path, runner: SippRunner) -> None:
    uas = Uas(tmp_path, "selfcheck_uas_status")
    res = runner.run("uac_expect_status", uas.target, variables={"expected_status": 480},
                     timeout=15)
    assert not res.ok() and res.failed == 1
    assert res.final_statuses == [486]
    uas.wait()


def test_uac_dtmf_sends_rfc4733_to_answered_address(tmp_path: Path, runner: SippRunner) -> None:
    with RtpPeer() as media:
        uas = Uas(tmp_path, "selfcheck_uas_answer", keys={"rtp_port": media.port})
        res = runner.run("uac_dtmf", uas.target, pause_ms=600, timeout=15)
        assert res.ok(), res.describe()
        assert uas.wait() == 0
        pkts = media.wait_packets(10, timeout=5, payload_types=[101])
        events = [struct.unpack("!BBH", p.payload[:4]) for p in pkts]
        assert {e[0] for e in events} == {1}
        assert any(e[1] & 0x80 for e in events)
