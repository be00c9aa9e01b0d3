// An unmodified SIP.js client for the browser e2e test (tests/e2e/test_browser.py): SIP.js's
// own Web.SimpleUser calls ?conference=NAME over the SIP-over-WebSocket URL in ?ws=, with
// SIP.js's own session description handler (its RTCPeerConnection, its SDP). Bundled by
// `make vendor-js` into tests/e2e/web/sipjs-e2e.bundle.js; window.sipjsClient exposes the
// state and an FFT of what the browser hears.
import { Web } from "sip.js";

const params = new URLSearchParams(location.search);
const state = { status: "idle", error: null, rms: 0, peakHz: 0 };
window.sipjsClient = state;

function analyse(stream) {
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const time = new Float32Array(analyser.fftSize);
  const freq = new Float32Array(analyser.frequencyBinCount);
  setInterval(() => {
    analyser.getFloatTimeDomainData(time);
    let sum = 0;
    for (const v of time) sum += v * v;
    state.rms = Math.sqrt(sum / time.length);
    analyser.getFloatFrequencyData(freq);
    let best = 1;
    for (let i = 1; i < freq.length; i++) if (freq[i] > freq[best]) best = i;
    state.peakHz = (best * ctx.sampleRate) / analyser.fftSize;
  }, 100);
}

async function main() {
  const wsUrl = params.get("ws");
  const host = new URL(wsUrl).hostname;
  const user = "sipjs-" + Math.random().toString(36).slice(2, 8);
  const audio = document.getElementById("remote");
  audio.muted = true; // played (WebAudio gets samples only then), not heard
  const simple = new Web.SimpleUser(wsUrl, {
    aor: `sip:${user}@${host}`,
    media: { constraints: { audio: true, video: false }, remote: { audio } },
    userAgentOptions: {
      displayName: params.get("name") || user,
      sessionDescriptionHandlerFactoryOptions: {
        peerConnectionConfiguration: { iceServers: [] },
        iceGatheringTimeout: 500,
      },
    },
    delegate: {
      onCallAnswered: () => {
        state.status = "in conference";
        analyse(simple.remoteMediaStream);
      },
      onCallHangup: () => { state.status = "left"; },
      onServerDisconnect: (e) => { state.status = "disconnected"; state.error = String(e); },
    },
  });
  state.status = "connecting";
  await simple.connect();
  await simple.call(`sip:${encodeURIComponent(params.get("conference"))}@${host}`);
  state.hangup = () => simple.hangup();
}

main().catch((e) => { state.status = "failed"; state.error = String(e && e.stack || e); });
