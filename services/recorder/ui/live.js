// Live transcript of a call from the recorder's SSE stream (/calls/{id}/live/events; services/recorder/live.py).
// One element per item_id: a "delta" appends to it, a "turn" replaces its text, so a page opened mid-turn
// shows each turn once. Tool calls stay on the page after the call ends (and are replayed from the archive).
"use strict";
window.SwitchboardLive = function (callId, token, logEl, statusEl, onEnded) {
  const url = `/calls/${encodeURIComponent(callId)}/live/events` + (token ? `?access_token=${encodeURIComponent(token)}` : "");
  const items = {};   // item_id -> text element
  const tools = {};   // tool_call_id -> result element
  function add(cls, role, text) {
    const div = document.createElement("div"); div.className = "turn " + cls;
    const r = document.createElement("span"); r.className = "role"; r.textContent = role;
    const t = document.createElement("span"); t.className = "text"; t.textContent = text;
    div.append(r, t); logEl.append(div); return [div, t];
  }
  function turn(role, itemId) {
    if (itemId && items[itemId]) return items[itemId];
    const t = add(role, role === "user" ? "caller" : "agent", "")[1];
    if (itemId) items[itemId] = t;
    return t;
  }
  const es = new EventSource(url);
  es.addEventListener("live", () => { statusEl.textContent = "live"; });
  es.addEventListener("turn", (e) => { const d = JSON.parse(e.data); turn(d.role, d.item_id).textContent = d.text; });
  es.addEventListener("delta", (e) => { const d = JSON.parse(e.data); turn("assistant", d.item_id).textContent += d.delta; });
  es.addEventListener("tool", (e) => {
    const d = JSON.parse(e.data);
    const [div] = add("tool", "tool", `${d.name}(${d.arguments})`);
    const res = document.createElement("div"); res.className = "result";
    res.textContent = d.output != null ? "→ " + d.output : "(waiting for the result)";
    div.append(res);
    if (d.tool_call_id) tools[d.tool_call_id] = res;
  });
  es.addEventListener("tool_result", (e) => {
    const d = JSON.parse(e.data);
    if (tools[d.tool_call_id]) tools[d.tool_call_id].textContent = "→ " + d.output;
  });
  es.addEventListener("speech_started", () => {
    const b = document.createElement("div"); b.className = "barge"; b.textContent = "caller speaking…"; logEl.append(b);
  });
  es.addEventListener("ended", () => { statusEl.textContent = "call ended"; es.close(); if (onEnded) onEnded(); });
  es.onerror = () => { if (es.readyState !== EventSource.CLOSED) statusEl.textContent = "disconnected (retrying)…"; };
  return es;
};
