// The confroom dashboard: asks for the API token, then follows GET /v1/Events (Server-Sent
// Events over fetch, so the token goes in the Authorization header) and renders every live
// conference; the buttons call the REST API. Nothing is shown without a token the API accepts.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let token = "";
  let abort = null;
  const state = { status: "no token", conferences: [] };
  window.confroomDashboard = state;

  function setStatus(s, cls) {
    state.status = s;
    $("feed-status").textContent = s;
    $("feed-status").className = cls || "";
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    Object.assign(e, attrs || {});
    for (const c of children) e.append(c);
    return e;
  }

  async function api(method, path, body) {
    const r = await fetch(path, {
      method, headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!r.ok) {
      const text = await r.text();
      setStatus(`${method} failed: ${r.status} ${text}`, "error");
    }
  }

  function button(label, onClick) {
    const b = el("button", { textContent: label, type: "button" });
    b.dataset.action = label;
    b.addEventListener("click", onClick);
    return b;
  }

  function render(confs) {
    state.conferences = confs;
    const root = $("conferences");
    root.replaceChildren();
    if (!confs.length) root.append(el("p", { textContent: "No conference in progress." }));
    for (const c of confs) {
      const calls = `/v1/Accounts/${c.account_sid}/Calls/`;
      const box = el("section", { className: "conf" });
      box.dataset.conference = c.friendly_name;
      box.append(el("h2", { textContent: `${c.friendly_name} (${c.members} members)` }),
        button("End conference", () => api("DELETE",
          `/v1/Accounts/${c.account_sid}/Conferences/${encodeURIComponent(c.friendly_name)}`)));
      const table = el("table");
      table.append(el("tr", {}, ...["Member", "Node", "Muted", "Held", "Talking", "Joined", ""]
        .map((h) => el("th", { textContent: h }))));
      for (const p of c.participants) {
        const row = el("tr");
        row.dataset.callSid = p.call_sid;
        row.dataset.from = p.from || "";
        row.dataset.talking = String(p.talking);
        row.dataset.muted = String(p.muted);
        row.dataset.node = p.node || "";
        const update = (body) => api("PUT", calls + p.call_sid, body);
        row.append(
          el("td", { textContent: p.from || p.call_sid }),
          el("td", { textContent: p.node || "" }),
          el("td", { textContent: p.muted ? "yes" : "no" }),
          el("td", { textContent: p.on_hold ? "yes" : "no" }),
          el("td", { textContent: p.talking ? "talking" : "", className: p.talking ? "talking" : "" }),
          el("td", { textContent: p.joined_at ? new Date(p.joined_at).toLocaleTimeString() : "" }),
          el("td", {},
            button(p.muted ? "Unmute" : "Mute", () => update({ mute_status: p.muted ? "unmute" : "mute" })),
            button(p.on_hold ? "Unhold" : "Hold", () => update({ conf_hold_status: p.on_hold ? "unhold" : "hold" })),
            button("Kick", () => update({ conferenceParticipantAction: { action: "kick" } }))));
        table.append(row);
      }
      box.append(table);
      root.append(box);
    }
  }

  async function follow() {
    if (abort) abort.abort();
    abort = new AbortController();
    $("conferences").replaceChildren();
    setStatus("connecting");
    let r;
    try {
      r = await fetch("/v1/Events", { headers: { Authorization: `Bearer ${token}` }, signal: abort.signal });
    } catch (e) {
      setStatus(`no connection: ${e}`, "error");
      return;
    }
    if (r.status === 401) { setStatus("wrong token", "error"); return; }
    if (!r.ok) { setStatus(`error ${r.status}`, "error"); return; }
    setStatus("live");
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      let chunk;
      try { chunk = await reader.read(); } catch (e) { break; }
      if (chunk.done) break;
      buf += chunk.value;
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (data) render(JSON.parse(data));
      }
    }
    setStatus("disconnected (reconnecting)", "error");
    setTimeout(follow, 2000);
  }

  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("confroom-token", token);
    follow();
  });
  const saved = sessionStorage.getItem("confroom-token");
  if (saved) { $("token").value = saved; token = saved; follow(); }
})();
