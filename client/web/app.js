// The prompt-as-you-type page: sends the prompt on every input event (the server coalesces,
// so there is no debounce here) and shows the newest frame, as WebRTC video or as WebSocket
// JPEGs drawn on a canvas, with frames/s and keystroke-to-picture latency measured here.

import { Connection } from "./connection.js";
import { VideoSeq } from "./videoseq.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// /?kiosk: an installation's screen. The picture fills the window with only the prompt field
// under it, and the link never rests: it reconnects even after an idle timeout, since nobody
// may be there to type the keystroke that would wake it.
const kiosk = params.has("kiosk");
if (kiosk) document.body.classList.add("kiosk");
// /?channel=NAME: this page's frames are also shown at /stream.mjpg?channel=NAME (a projector,
// OBS), the URL an installation can fix in advance.
const channel = params.get("channel");
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws` +
  (channel ? `?channel=${encodeURIComponent(channel)}` : "");

const state = {
  seq: 0,
  sentAt: new Map(), // seq -> performance.now() when sent
  shownSeq: -1,
  latencies: [], // recent keystroke-to-picture, ms
  shownTimes: [], // display times in the last second, for frames/s
  transport: "websocket",
};
window.promptcast = state; // for tests and the curious

const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const video = $("video");
const videoSeq = new VideoSeq(); // which seq the displayed video frame shows

const STATUS_TEXT = { idle: "idle: type to reconnect" };

const conn = new Connection(wsUrl, {
  state: (s) => {
    $("status").dataset.state = s;
    $("status").textContent = STATUS_TEXT[s] || s;
    if (s !== "connected") keepPicture();
  },
  hello,
  // A notice (e.g. prompt_truncated) is shown like an error, but the picture still comes.
  message: (msg) => { if (msg.type === "notice") showError(msg.message); },
  jpeg: drawJpeg,
  video: { start: () => videoSeq.reset(), track: showVideo, meta: (m) => videoSeq.meta(m) },
  transport: setTransport,
  error: (msg) => showError(`${msg.code}: ${msg.message}`),
}, {
  webrtc: params.get("transport") !== "websocket",
  // A server started with a token is opened as /?token=...; the socket carries it as a
  // subprotocol, so it stays out of the server's request logs.
  token: params.get("token"),
  stayConnected: kiosk,
});

function hello(msg) {
  const model = msg.model;
  $("model").textContent = `${model.name} (${model.preset}, ${model.scheduler}, ${model.decoder})`;
  // After a reconnect (an idle timeout, a server restart) the picture keeps its seed, steps
  // and size: only a first connection takes the session's.
  if ($("seed").value === "") $("seed").value = msg.session.seed;
  fill($("steps"), model.steps.allowed.map((s) => [s, s]), model.steps.default);
  fill($("size"), model.sizes.allowed.map(([w, h]) => [`${w}x${h}`, `${w}×${h}`]),
       model.sizes.default.join("x"));
  showError("");
  if ($("prompt").value) sendPrompt(); // after a reconnect, show the text as it stands
}

// Fills a <select>, keeping its current choice if the server still allows it.
function fill(select, options, fallback) {
  const current = select.value;
  select.replaceChildren(...options.map(([value, label]) => new Option(label, value)));
  select.value = options.some(([value]) => String(value) === current) ? current : String(fallback);
}

function sendPrompt(extra = {}) {
  state.seq += 1;
  const [width, height] = $("size").value.split("x").map(Number);
  const message = {
    type: "prompt", seq: state.seq, text: $("prompt").value,
    seed: Number($("seed").value), steps: Number($("steps").value), width, height, ...extra,
  };
  if (conn.send(message)) state.sentAt.set(state.seq, performance.now());
}

$("prompt").addEventListener("input", () => sendPrompt());
for (const id of ["seed", "steps", "size"]) $(id).addEventListener("change", () => sendPrompt());
$("new-seed").addEventListener("click", () => {
  $("seed").value = Math.floor(Math.random() * 2 ** 32);
  sendPrompt();
});
$("download").addEventListener("click", download);

// ---------------------------------------------------------------- display and measurement

function shown(seq) {
  const now = performance.now();
  if (seq > state.shownSeq) {
    const sent = state.sentAt.get(seq);
    if (sent !== undefined) {
      state.latencies.push(now - sent);
      if (state.latencies.length > 50) state.latencies.shift();
    }
    for (const s of state.sentAt.keys()) if (s <= seq) state.sentAt.delete(s);
    state.shownSeq = seq;
    $("shown-seq").textContent = seq;
  }
  state.shownTimes.push(now);
}

async function drawJpeg(header, blob) {
  if (state.transport !== "websocket") return;
  const bitmap = await createImageBitmap(blob);
  if (canvas.width !== bitmap.width) canvas.width = bitmap.width;
  if (canvas.height !== bitmap.height) canvas.height = bitmap.height;
  ctx.drawImage(bitmap, 0, 0);
  shown(header.seq);
}

function showVideo(stream) {
  video.srcObject = stream;
  video.play().catch(() => {});
  const onFrame = (_now, meta) => {
    const seq = videoSeq.seqOf(meta.rtpTimestamp);
    if (seq !== null && state.transport === "webrtc") shown(seq);
    video.requestVideoFrameCallback(onFrame);
  };
  if ("requestVideoFrameCallback" in video) video.requestVideoFrameCallback(onFrame);
}

function setTransport(name, reason) {
  state.transport = name;
  video.hidden = name !== "webrtc";
  canvas.hidden = name === "webrtc";
  $("transport").textContent = name === "webrtc" ? "WebRTC video" : `WebSocket frames${reason ? ` (${reason})` : ""}`;
}

// When the link closes, the video's last picture moves to the canvas: a closed peer connection
// may blank the video element, and JPEG frames draw on the canvas until video is back.
function keepPicture() {
  if (state.transport !== "webrtc") return;
  if (video.videoWidth) {
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    ctx.drawImage(video, 0, 0);
  }
  setTransport("websocket", "until video reconnects");
}

function showError(text) {
  $("error").hidden = !text;
  $("error").textContent = text;
}

setInterval(() => {
  const now = performance.now();
  state.shownTimes = state.shownTimes.filter((t) => now - t < 1000);
  $("fps").textContent = state.shownTimes.length;
  const sorted = [...state.latencies].sort((a, b) => a - b);
  $("latency").textContent = sorted.length ? Math.round(sorted[Math.floor(sorted.length / 2)]) : "–";
}, 250);

function download() {
  const out = document.createElement("canvas");
  const source = state.transport === "webrtc" ? video : canvas;
  out.width = source.videoWidth || source.width;
  out.height = source.videoHeight || source.height;
  out.getContext("2d").drawImage(source, 0, 0);
  out.toBlob((blob) => {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `promptcast-${state.shownSeq}.png`;
    a.click();
  }, "image/png");
}
