// The confroom web phone: joins the conference named in ?conference= over SIP over
// WebSocket (JsSIP) on this server's /sip, with mute and leave. window.confroomPhone exposes
// the state and an FFT of what the browser hears (used by the end-to-end test).
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const conference = params.get("conference") || "";
  const $ = (id) => document.getElementById(id);
  const statusEl = $("status");
  const state = { status: "idle", muted: false, rms: 0, peakHz: 0, error: null, pc: null };
  // inbound/outbound RTP counters of the call, for diagnostics
  state.stats = async () => {
    if (!state.pc) return null;
    const out = {};
    (await state.pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" || r.type === "outbound-rtp" || r.type === "transport")
        out[r.type] = r;
    });
    return out;
  };
  window.confroomPhone = state;
  $("conference").textContent = conference || "(none: add ?conference=NAME)";
  $("name").value = params.get("name") || "";
  let ua = null;
  let session = null;
  let analyser = null;

  function setStatus(s, error) {
    state.status = s;
    if (error) state.error = error;
    statusEl.textContent = error ? `${s}: ${error}` : s;
    document.title = `confroom phone - ${s}`;
    $("join").disabled = s === "connecting" || s === "in conference";
    $("mute").disabled = s !== "in conference";
    $("leave").disabled = s !== "in conference" && s !== "connecting";
  }

  function listen(stream) {
    const el = $("remote");
    el.srcObject = stream; // WebAudio only gets samples while an element plays the track
    el.muted = params.has("silent");
    const ctx = new AudioContext();
    const src = ctx.createMediaStreamSource(stream);
    analyser = ctx.createAnalyser();
    analyser.fftSize = 2048;
    src.connect(analyser);
    const time = new Float32Array(analyser.fftSize);
    const freq = new Float32Array(analyser.frequencyBinCount);
    setInterval(() => {
      analyser.getFloatTimeDomainData(time);
      let sum = 0;
      for (const v of time) sum += v * v;
      state.rms = Math.sqrt(sum / time.length);
      analyser.getFloatFrequencyData(freq);
      let best = 0;
      for (let i = 1; i < freq.length; i++) if (freq[i] > freq[best]) best = i;
      state.peakHz = (best * ctx.sampleRate) / analyser.fftSize;
      $("level").value = state.rms;
    }, 100);
  }

  function join() {
    if (!conference) {
      setStatus("idle", "no conference in the address (?conference=NAME)");
      return;
    }
    const host = location.hostname;
    const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/sip`;
    const user = "web-" + Math.random().toString(36).slice(2, 8);
    const display = ($("name").value || "").trim() || user;
    setStatus("connecting");
    ua = new JsSIP.UA({
      sockets: [new JsSIP.WebSocketInterface(wsUrl)],
      uri: `sip:${user}@${host}`,
      display_name: display,
      register: false,
      session_timers: false,
    });
    ua.on("connected", () => {
      session = ua.call(`sip:${encodeURIComponent(conference)}@${host}`, {
        mediaConstraints: { audio: { autoGainControl: false, noiseSuppression: false,
                                     echoCancellation: false }, video: false },
        pcConfig: { iceServers: [], rtcpMuxPolicy: "require" },
        extraHeaders: [`X-Conference: ${conference}`],
      });
      // ua.call() has made the peer connection already (its "peerconnection" event is gone)
      state.pc = session.connection;
      state.pc.addEventListener("track", (t) => listen(t.streams[0]));
      session.on("confirmed", () => setStatus("in conference"));
      session.on("ended", (e) => { setStatus("left", e.cause); ua.stop(); });
      session.on("failed", (e) => { setStatus("failed", e.cause); ua.stop(); });
    });
    ua.on("disconnected", () => { if (state.status === "connecting") setStatus("failed", "no connection to " + wsUrl); });
    ua.start();
  }

  $("join").addEventListener("click", join);
  $("mute").addEventListener("click", () => {
    if (!session) return;
    state.muted = !state.muted;
    if (state.muted) session.mute({ audio: true }); else session.unmute({ audio: true });
    $("mute").textContent = state.muted ? "Unmute" : "Mute";
  });
  $("leave").addEventListener("click", () => { if (session) session.terminate(); });
  setStatus("idle");
  if (params.has("autojoin")) join();
})();
