// Browser phone for the Switchboard gateway (protocol: services/gateway/browser.py).
"use strict";
const logBox = document.getElementById("log");
const callBtn = document.getElementById("call");
const hangBtn = document.getElementById("hangup");
const OUT_RATE = 24000;
let ws = null, ctx = null, mic = null, proc = null, playHead = 0;
let pendingMarks = [];   // [{name, at}] in play order; echoed when ctx.currentTime reaches `at`
let sources = [];

function log(line) { logBox.textContent += line + "\n"; }

async function mintToken() {
  const headers = {};
  const apiToken = document.getElementById("apiToken").value;
  if (apiToken) headers["Authorization"] = "Bearer " + apiToken;
  const r = await fetch("/browser/token", { method: "POST", headers });
  if (!r.ok) throw new Error("token request failed: " + r.status);
  return (await r.json()).token;
}

function playPcm16(buf) {
  const pcm = new Int16Array(buf);
  const audio = ctx.createBuffer(1, pcm.length, OUT_RATE);
  const ch = audio.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
  const src = ctx.createBufferSource();
  src.buffer = audio;
  src.connect(ctx.destination);
  playHead = Math.max(playHead, ctx.currentTime);
  src.start(playHead);
  playHead += audio.duration;
  sources.push(src);
  src.onended = () => { sources = sources.filter((s) => s !== src); };
}

function echoMarks(all) {
  const now = ctx ? ctx.currentTime : 0;
  while (pendingMarks.length && (all || pendingMarks[0].at <= now)) {
    ws.send(JSON.stringify({ event: "mark", name: pendingMarks.shift().name }));
  }
}

async function call() {
  callBtn.disabled = true;
  ctx = new AudioContext();
  mic = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
  const token = await mintToken();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/browser?token=${encodeURIComponent(token)}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    const rate = [16000, 24000, 48000].includes(ctx.sampleRate) ? ctx.sampleRate : 48000;
    ws.send(JSON.stringify({ event: "start", sample_rate: rate, agent: document.getElementById("agent").value || undefined }));
    const input = ctx.createMediaStreamSource(mic);
    proc = ctx.createScriptProcessor(2048, 1, 1);
    proc.onaudioprocess = (e) => {
      const f = e.inputBuffer.getChannelData(0);
      const out = new Int16Array(f.length);
      for (let i = 0; i < f.length; i++) out[i] = Math.max(-32768, Math.min(32767, f[i] * 32768));
      if (ws.readyState === WebSocket.OPEN) ws.send(out.buffer);
      echoMarks(false);
    };
    input.connect(proc);
    proc.connect(ctx.destination);
    hangBtn.disabled = false;
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") { playPcm16(ev.data); return; }
    const msg = JSON.parse(ev.data);
    if (msg.event === "started") log("call " + msg.call_id);
    else if (msg.event === "mark") pendingMarks.push({ name: msg.name, at: playHead });
    else if (msg.event === "clear") {
      sources.forEach((s) => s.stop()); sources = []; playHead = ctx.currentTime; echoMarks(true);
    }
  };
  ws.onclose = (ev) => { log(`call ended (${ev.code} ${ev.reason})`); cleanup(); };
}

function cleanup() {
  if (proc) proc.disconnect();
  if (mic) mic.getTracks().forEach((t) => t.stop());
  if (ctx) ctx.close();
  proc = mic = ctx = null; pendingMarks = []; sources = [];
  callBtn.disabled = false; hangBtn.disabled = true;
}

callBtn.onclick = () => call().catch((e) => { log(String(e)); cleanup(); });
hangBtn.onclick = () => { if (ws) ws.send(JSON.stringify({ event: "stop" })); };
