"""A real browser in a conference: Debian's headless Chromium (chromium-driver + selenium) with
a fake microphone playing a 1000 Hz WAV opens `/phone?conference=...` (JsSIP over `/sip`,
WebRTC media: ICE-lite, DTLS-SRTP, Opus); a SIPp caller's RTP peer in the same conference sends
440 Hz. Proven on both sides: the page's WebAudio FFT of the remote track peaks at 440 Hz;
the SIPp side decodes 1000 Hz from its RTP; nobody hears themselves. The dashboard, in the
same browser, shows both members, marks the SIPp member talking within 1 s of its tone
starting, and its Mute button silences the browser for the SIPp side (checked on the wire).
With CONFROOM_SCREENSHOTS=dir the two pages are saved there as PNG (docs/ holds the ones in
the README). A second test does the same two-way audio check with an unmodified SIP.js client
(tests/e2e/web/: SIP.js's Web.SimpleUser, bundled from web/sipjs-e2e.js by `make vendor-js`)."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ConfroomFactory
from harness import (
    HOST,
    HookApp,
    Reply,
    RtpPeer,
    SippRunner,
    free_tcp_port,
    require_tool,
    tone,
    tone_power,
    write_wav,
)

from talk_signals import espeak

pytestmark = pytest.mark.e2e

TOKEN = "browser-e2e-token"
ROOM = "browser-room"


def _wait(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    binary = require_tool("chromium")
    driver_path = require_tool("chromedriver")
    from selenium import webdriver  # the test extra's dependency: missing is a failure
    from selenium.webdriver.chrome.service import Service

    wav = write_wav(tmp_path / "mic.wav", tone(1000, 30.0, rate=48000, amplitude=0.25),
                    rate=48000)
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1100,700"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _attrs(driver: Any, selector: str, name: str) -> list[str | None]:
    """Attribute `name` of every element matching `selector`, read in one script: the
    dashboard re-renders its rows on every live update, so element handles go stale."""
    return list(driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]),"
        " e => e.getAttribute(arguments[1]))", selector, name))


def _click(driver: Any, selector: str) -> None:
    """Click the element matching `selector`, finding it again if a re-render replaced it."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def attempt() -> bool:
        try:
            driver.find_element(By.CSS_SELECTOR, selector).click()
        except StaleElementReferenceException:
            return False
        return True

    _wait(attempt, 5, f"a clickable {selector}")


def _server_addr(peer: RtpPeer) -> tuple[str, int]:
    return peer.wait_packets(1, timeout=15, payload_types=[0])[0].source


def test_browser_joins_hears_is_heard_and_the_dashboard_mutes_it(
    confroom: ConfroomFactory, sipp: SippRunner, rtp_peer_factory: Callable[[], RtpPeer],
    chromium: Any,
) -> None:
    from selenium.webdriver.common.by import By

    port = free_tcp_port()
    srv = confroom(verbs=[{"verb": "conference", "name": ROOM}],
                   extra_toml={"http": {"port": port, "token": TOKEN}})
    srv.wait_log(rf"ws on {re.escape(HOST)}:{port}/sip")
    base = f"http://{HOST}:{port}"
    shots = os.environ.get("CONFROOM_SCREENSHOTS")

    phone = chromium.current_window_handle
    chromium.get(f"{base}/phone?conference={ROOM}&autojoin&name=browser&silent")
    _wait(lambda: chromium.execute_script("return window.confroomPhone.status")
          == "in conference", 20, "the phone page to join")
    srv.wait_log(r"WebRTC media \(ICE-lite, DTLS-SRTP\) over ws")
    srv.wait_log(r"codec=OPUS pt=111")  # Chromium offers Opus first: the browser leg is Opus

    peer = rtp_peer_factory()
    run = sipp.start("uac_basic", srv.target, keys={"rtp_port": peer.port}, pause_ms=16000,
                     timeout=60)
    srv.wait_log(r"conference join .*members=2", timeout=15)
    addr = _server_addr(peer)

    # the browser hears the SIP side's silence now, not its own 1000 Hz
    own = [chromium.execute_script("return window.confroomPhone.rms") for _ in range(5)]
    assert max(own) < 0.01, f"the browser hears itself (rms {own})"

    # dashboard: the token first, then both members live
    chromium.switch_to.new_window("tab")
    dashboard = chromium.current_window_handle
    chromium.get(f"{base}/dashboard")
    assert chromium.find_elements(By.CSS_SELECTOR, "tr[data-call-sid]") == []
    chromium.find_element(By.ID, "token").send_keys(TOKEN)
    chromium.find_element(By.CSS_SELECTOR, "#token-form button").click()
    froms = _wait(lambda: len(_attrs(chromium, "tr[data-call-sid]", "data-from")) == 2
                  and _attrs(chromium, "tr[data-call-sid]", "data-from"), 10,
                  "two members on the dashboard")
    assert any((f or "").startswith("web-") for f in froms), froms
    sipp_row = "tr[data-call-sid]:not([data-from^='web-'])"
    browser_row = "tr[data-call-sid][data-from^='web-']"

    # the SIP side speaks: shown talking on the dashboard within 1 s (a tone is not speech
    # for the talk detector, so this is espeak-ng)
    require_tool("espeak-ng")
    speech = espeak("one two three four five six seven")
    t_speech = time.monotonic()
    speaker = threading.Thread(target=peer.send_pcm, args=(speech, addr), daemon=True)
    speaker.start()
    _wait(lambda: _attrs(chromium, sipp_row, "data-talking") == ["true"], 1.0,
          "the SIP member shown talking")
    talking_after = time.monotonic() - t_speech
    if shots:
        chromium.save_screenshot(str(Path(shots) / "dashboard.png"))
    speaker.join(timeout=15)

    # the SIP side sends 440 Hz: the browser's FFT of what it hears peaks there
    t0 = time.monotonic()
    sender = peer.send_tone_async(440, 3.0, addr, amplitude=0.2)
    chromium.switch_to.window(phone)
    try:
        heard = _wait(lambda: (lambda s: s if s["rms"] > 0.02 and abs(s["peakHz"] - 440) < 30
                               else None)(chromium.execute_script(
                                   "const s = window.confroomPhone;"
                                   "return {rms: s.rms, peakHz: s.peakHz}")),
                      5, "the browser to hear 440 Hz")
    except AssertionError:
        state = chromium.execute_script(
            "const s = window.confroomPhone; return [s.rms, s.peakHz, await s.stats()]")
        raise AssertionError(f"the browser does not hear 440 Hz: {state}") from None
    if shots:
        chromium.save_screenshot(str(Path(shots) / "phone.png"))
    sender.join(timeout=10)

    # the SIP side hears the browser (1000 Hz), not itself (440 Hz)
    pcm = peer.decoded_pcm(since=t0 + 0.5)[: 2 * 8000]
    assert len(pcm) >= 8000
    assert tone_power(pcm, 1000) > 0.2, "the SIP member does not hear the browser"
    assert tone_power(pcm, 440) < 0.01, "the SIP member hears itself"

    # Mute on the browser's row: the SIP side hears silence on the wire
    chromium.switch_to.window(dashboard)
    _click(chromium, f"{browser_row} button[data-action='Mute']")
    _wait(lambda: _attrs(chromium, browser_row, "data-muted") == ["true"], 5,
          "the browser shown muted")
    t_mute = time.monotonic()
    _wait(lambda: len(peer.decoded_pcm(since=t_mute + 0.4)) >= 8000, 5, "1 s of audio")
    muted = peer.decoded_pcm(since=t_mute + 0.4)[:8000]
    assert tone_power(muted, 1000) < 0.01 and np.abs(muted.astype(np.int32)).max() < 500, \
        "the muted browser is still heard"
    res = run.wait()
    assert res.ok(), res.describe()
    print(f"dashboard showed talking after {talking_after:.2f}s; browser heard "
          f"{heard['peakHz']:.0f} Hz at rms {heard['rms']:.3f}")


WEB = Path(__file__).resolve().parent / "web"


def test_unmodified_sipjs_client_joins_hears_and_is_heard(
    confroom: ConfroomFactory, sipp: SippRunner, rtp_peer_factory: Callable[[], RtpPeer],
    hook_app: HookApp, chromium: Any,
) -> None:
    """SIP.js 0.21.2 (pinned in web/package.json, bundled by `make vendor-js`) with its own
    Web.SimpleUser and session description handler, on a page served by the test, calls the
    conference over `/sip`; the SIPp member and the browser hear each other's tone (FFT in the
    page, decoded RTP on the SIPp side) and not their own."""
    for name, ctype in (("sipjs.html", "text/html"),
                        ("sipjs-e2e.bundle.js", "application/javascript")):
        hook_app.route(f"/{name}", Reply(body=(WEB / name).read_bytes(), content_type=ctype))
    port = free_tcp_port()
    srv = confroom(verbs=[{"verb": "conference", "name": ROOM}],
                   extra_toml={"http": {"port": port, "token": TOKEN}})
    srv.wait_log(rf"ws on {re.escape(HOST)}:{port}/sip")

    chromium.get(hook_app.url(f"/sipjs.html?conference={ROOM}&name=sipjs"
                              f"&ws=ws://{HOST}:{port}/sip"))

    def joined() -> bool:
        st = chromium.execute_script("return window.sipjsClient")
        if st["status"] in ("failed", "disconnected", "left"):
            raise AssertionError(f"the SIP.js client did not join: {st}")
        return bool(st["status"] == "in conference")

    _wait(joined, 20, "the SIP.js client to join")
    srv.wait_log(r"WebRTC media \(ICE-lite, DTLS-SRTP\) over ws")
    srv.wait_log(r"codec=OPUS pt=111")

    peer = rtp_peer_factory()
    run = sipp.start("uac_basic", srv.target, keys={"rtp_port": peer.port}, pause_ms=12000,
                     timeout=60)
    srv.wait_log(r"conference join .*members=2", timeout=15)
    addr = _server_addr(peer)

    # the browser hears the SIP side's silence, not its own 1000 Hz
    own = [chromium.execute_script("return window.sipjsClient.rms") for _ in range(5)]
    assert max(own) < 0.01, f"the SIP.js client hears itself (rms {own})"

    t0 = time.monotonic()
    sender = peer.send_tone_async(440, 3.0, addr, amplitude=0.2)
    try:
        heard = _wait(lambda: (lambda s: s if s["rms"] > 0.02 and abs(s["peakHz"] - 440) < 30
                               else None)(chromium.execute_script(
                                   "const s = window.sipjsClient;"
                                   "return {rms: s.rms, peakHz: s.peakHz}")),
                      5, "the SIP.js client to hear 440 Hz")
    except AssertionError:
        state = chromium.execute_script("return window.sipjsClient")
        raise AssertionError(f"the SIP.js client does not hear 440 Hz: {state}") from None
    sender.join(timeout=10)

    pcm = peer.decoded_pcm(since=t0 + 0.5)[: 2 * 8000]
    assert len(pcm) >= 8000
    assert tone_power(pcm, 1000) > 0.2, "the SIP member does not hear the SIP.js client"
    assert tone_power(pcm, 440) < 0.01, "the SIP member hears itself"
    chromium.execute_script("window.sipjsClient.hangup()")
    srv.wait_log(r"conference leave .*reason=hangup members=1", timeout=10)
    res = run.wait()
    assert res.ok(), res.describe()
    print(f"SIP.js client heard {heard['peakHz']:.0f} Hz at rms {heard['rms']:.3f}")
