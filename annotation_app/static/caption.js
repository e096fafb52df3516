// Speech caption task: record (MediaRecorder) with a timer and level meter, play back, re-record, submit.
import { api, ApiError, guardUnsaved, isTyping, nextTask, randomId, showError, startTask, UPLOAD_TIMEOUT_S } from "./common.js";

const { task, timer } = startTask();

const $ = (id) => document.getElementById(id);
const recordBtn = $("record"), rerecordBtn = $("rerecord"), submitBtn = $("submit");
const timerEl = $("timer"), levelEl = $("level"), statusEl = $("status"), playback = $("playback");

let recorder = null, stream = null, chunks = [], startedAt = 0, tick = null, meterLoop = null, audioCtx = null;
let take = null; // { blob, seconds, key }
let submitting = false;
let starting = false; // between a Record press and the recorder running: a second press waits
guardUnsaved(() => recorder?.state === "recording" || (take !== null && task.status === "leased"));

const fmt = (s) => `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, "0")}`;
const status = (text) => { statusEl.textContent = text; };

function pickMime() {
  for (const m of ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm", "audio/mp4"]) {
    if (window.MediaRecorder && MediaRecorder.isTypeSupported(m)) return m;
  }
  return "";
}

async function start() {
  // a second press while the microphone is being opened (a double click) used to start a second
  // recorder: the first one never stopped and spliced its chunks into every later take
  if (starting || recorder?.state === "recording" || task.status !== "leased") return;
  showError("");
  if (!navigator.mediaDevices?.getUserMedia || !window.MediaRecorder) {
    showError("This browser cannot record audio here (it needs HTTPS or localhost, and microphone access).");
    return;
  }
  starting = true; recordBtn.disabled = true; rerecordBtn.disabled = true;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: true } });
  } catch (e) {
    showError(`The microphone is not available: ${e.message}. Allow microphone access and try again.`);
    return;
  } finally {
    starting = false; recordBtn.disabled = false; rerecordBtn.disabled = false;
  }
  const mime = pickMime();
  recorder = new MediaRecorder(stream, mime ? { mimeType: mime } : undefined);
  const own = (chunks = []); // this recorder's chunks only
  recorder.ondataavailable = (e) => { if (e.data.size) own.push(e.data); };
  recorder.onstop = finish;
  recorder.start(1000);
  startedAt = performance.now();
  timer.busy = true;
  take = null; playback.hidden = true; rerecordBtn.hidden = true; submitBtn.disabled = true;
  recordBtn.textContent = "■ Stop"; recordBtn.classList.add("on");
  status("Recording… describe the image. Press Space to stop.");
  tick = setInterval(() => {
    const s = (performance.now() - startedAt) / 1000;
    timerEl.textContent = fmt(s);
    timerEl.style.color = s < task.min_seconds ? "var(--warn)" : "var(--ok)";
    if (s >= task.max_seconds) { status("Reached the maximum length."); stop(); }
  }, 100);
  meter(stream);
}

function meter(s) {
  audioCtx = new AudioContext();
  const analyser = audioCtx.createAnalyser();
  analyser.fftSize = 1024;
  audioCtx.createMediaStreamSource(s).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  const loop = () => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0; for (const v of buf) sum += v * v;
    const db = 20 * Math.log10(Math.sqrt(sum / buf.length) + 1e-9);
    levelEl.style.width = `${Math.max(0, Math.min(100, ((db + 60) / 60) * 100))}%`;
    meterLoop = requestAnimationFrame(loop);
  };
  loop();
}

function stop() {
  if (!recorder || recorder.state === "inactive") return;
  recorder.stop();
}

function finish() {
  const seconds = (performance.now() - startedAt) / 1000;
  clearInterval(tick); cancelAnimationFrame(meterLoop);
  audioCtx?.close(); levelEl.style.width = "0";
  stream.getTracks().forEach((t) => t.stop());
  timer.busy = false;
  const blob = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
  take = { blob, seconds, key: randomId() }; // a new take gets a new idempotency key
  recordBtn.textContent = "● Record"; recordBtn.classList.remove("on"); recordBtn.hidden = true;
  rerecordBtn.hidden = false;
  playback.src = URL.createObjectURL(blob); playback.hidden = false;
  timerEl.textContent = fmt(seconds);
  if (seconds < task.min_seconds) {
    status(`That was ${seconds.toFixed(0)} s; please speak for at least ${task.min_seconds} s. Re-record to try again.`);
    submitBtn.disabled = true;
  } else {
    status(`Recorded ${seconds.toFixed(1)} s. Listen back, re-record, or press Enter to submit.`);
    submitBtn.disabled = false;
  }
}

async function submit() {
  if (!take || submitting || submitBtn.disabled) return;
  submitting = true; submitBtn.disabled = true; showError("");
  status("Uploading…");
  const ext = take.blob.type.includes("ogg") ? "ogg" : take.blob.type.includes("mp4") ? "m4a" : "webm";
  for (let attempt = 1; attempt <= 4; attempt++) {
    const form = new FormData();
    form.append("audio", take.blob, `recording.${ext}`);
    form.append("idempotency_key", take.key);
    form.append("active_seconds", String(timer.seconds));
    try {
      const rec = await api(`/api/assignments/${task.id}/recording`, { method: "POST", form, timeoutS: UPLOAD_TIMEOUT_S });
      status(`Saved (${rec.duration_s.toFixed(1)} s). Loading the next image…`);
      document.body.dataset.submitted = String(rec.id);
      nextTask(task.project_id);
      return;
    } catch (e) {
      if (e instanceof ApiError) {  // the server refused it: say why, and let the annotator fix it
        showError(e.message); status("Not saved.");
        submitting = false; submitBtn.disabled = e.status === 409;
        return;
      }
      // a network failure: retry with the same key, which never makes a second recording
      status(`Upload failed (${e.message}); retrying (${attempt}/3)…`);
      await new Promise((r) => setTimeout(r, 1000 * attempt));
    }
  }
  showError("The upload keeps failing; check your connection and press Submit again.");
  submitting = false; submitBtn.disabled = false;
}

recordBtn.addEventListener("click", (e) => { e.currentTarget.blur(); recorder?.state === "recording" ? stop() : start(); });
rerecordBtn.addEventListener("click", (e) => { e.currentTarget.blur(); recordBtn.hidden = false; start(); });
submitBtn.addEventListener("click", submit);

addEventListener("keydown", (e) => {
  if (isTyping(e.target) || e.repeat) return;
  if (e.code === "Space") {
    if (recorder?.state === "recording") { e.preventDefault(); stop(); }
    else if (take && !submitBtn.disabled) {
      // a take ready to submit is replaced only by the Re-record button (Space used to discard it,
      // e.g. pressed to pause the player); on the player itself Space plays and pauses
      if (e.target !== playback) { e.preventDefault(); status("Press Re-record to replace this take, or Enter to submit it."); }
    } else if (!submitting) { e.preventDefault(); recordBtn.hidden = false; start(); }
  } else if (e.key === "Enter") {
    e.preventDefault();
    submit();
  }
});
// a focused button would also "click" on Space's keyup
addEventListener("keyup", (e) => { if (e.code === "Space" && !isTyping(e.target)) e.preventDefault(); });
if (task.status !== "leased") { recordBtn.disabled = true; status("This task is closed."); }
