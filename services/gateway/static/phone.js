// Browser phone for the Switchboard gateway (protocol: services/gateway/browser.py).
// The microphone is captured by an AudioWorklet (phone-worklet.js) at the AudioContext's real sample rate,
// which the page declares in "start" (the gateway resamples), and the live transcript of the call is shown.
"use strict";
const logBox = document.getElementById("log");
const transcriptBox = document.getElementById("transcript");
const callLink = document.getElementById("callLink");
const callBtn = document.getElementById("call");
const hangBtn = document.getElementById("hangup");
const OUT_RATE = 24000;
const MAX_IN_RATE = 48000;  // the gateway accepts 8000..48000 Hz
let ws = null, ctx = null, mic = null, node = null, mute = null, playHead = 0;
let pendingMarks = [];   // [{name, at}] in play order; echoed when ctx.currentTime reaches `at`
let sources = [];
let lines = {};          // item_id -> text element of the live transcript

function log(line) { logBox.textContent += line + "\n"; }

function line(role, itemId) {
  if (itemId && lines[itemId]) return lines[itemId];
  const div = document.createElement("div"); div.className = "turn " + role;
  const who = document.createElement("b"); who.textContent = role === "user" ? "you: " : role === "tool" ? "tool: " : "agent: ";
  const text = document.createElement("span");
  div.append(who, text); transcriptBox.append(div);
  if (itemId) lines[itemId] = text;
  return text;
}

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
  transcriptBox.textContent = ""; lines = {}; callLink.textContent = "";
  ctx = new AudioContext();
  if (ctx.sampleRate > MAX_IN_RATE) { await ctx.close(); ctx = new AudioContext({ sampleRate: MAX_IN_RATE }); }
  await ctx.audioWorklet.addModule("/phone-worklet.js");
  mic = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true } });
  const token = await mintToken();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/browser?token=${encodeURIComponent(token)}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    // the rate the samples really have: the AudioContext's (e.g. 44100), never an assumed 48000
    ws.send(JSON.stringify({ event: "start", sample_rate: ctx.sampleRate, agent: document.getElementById("agent").value || undefined }));
    log(`microphone at ${ctx.sampleRate} Hz`);
    const input = ctx.createMediaStreamSource(mic);
    node = new AudioWorkletNode(ctx, "mic-pcm16", { numberOfInputs: 1, numberOfOutputs: 1, channelCount: 1 });
    node.port.onmessage = (e) => {
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(e.data);
      echoMarks(false);
    };
    // the worklet is pulled by the graph only when it reaches the destination: through a muted gain
    mute = ctx.createGain(); mute.gain.value = 0;
    input.connect(node); node.connect(mute); mute.connect(ctx.destination);
    hangBtn.disabled = false;
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data !== "string") { playPcm16(ev.data); return; }
    const msg = JSON.parse(ev.data);
    if (msg.event === "started") {
      log("call " + msg.call_id);
      document.body.dataset.callId = msg.call_id;
      if (msg.call_page) {
        const a = document.createElement("a"); a.href = msg.call_page; a.target = "_blank"; a.id = "callPage";
        a.textContent = "call page (recording, transcript, trace)"; callLink.append(a);
      }
    }
    else if (msg.event === "mark") pendingMarks.push({ name: msg.name, at: playHead });
    else if (msg.event === "clear") {
      sources.forEach((s) => s.stop()); sources = []; playHead = ctx.currentTime; echoMarks(true);
    }
    else if (msg.event === "transcript") line(msg.role, msg.item_id).textContent = msg.text;
    else if (msg.event === "transcript_delta") line("assistant", msg.item_id).textContent += msg.delta;
    else if (msg.event === "tool") line("tool", null).textContent = `${msg.name}(${msg.arguments})`;
  };
  ws.onclose = (ev) => { log(`call ended (${ev.code} ${ev.reason})`); document.body.dataset.ended = "1"; cleanup(); };
}

function cleanup() {
  if (node) { node.port.onmessage = null; node.disconnect(); }
  if (mute) mute.disconnect();
  if (mic) mic.getTracks().forEach((t) => t.stop());
  if (ctx) ctx.close();
  node = mute = mic = ctx = null; pendingMarks = []; sources = [];
  callBtn.disabled = false; hangBtn.disabled = true;
}

callBtn.onclick = () => call().catch((e) => { log(String(e)); cleanup(); });
hangBtn.onclick = () => { if (ws) ws.send(JSON.stringify({ event: "stop" })); };
