// Shared helpers for the task pages: the API client (CSRF header), active time, leaving a task.
import { Viewer } from "./viewer.js";

export const csrfToken = () => document.querySelector('meta[name="csrf-token"]')?.content ?? "";

export class ApiError extends Error {
  constructor(message, status, body) { super(message); this.status = status; this.body = body; }
}

/** The server said nothing within the time allowed: the request was given up (it may still have
 *  arrived, so what retries it must be safe to repeat). Not an ApiError: nothing was refused. */
export class TimeoutError extends Error {}
export const UPLOAD_TIMEOUT_S = 180; // a 90 s take is ~0.5 MB: minutes only on a very poor line
export const MODEL_TIMEOUT_S = 600; // the app waits for the language model's answer, slow on a CPU

/** fetch() a JSON API route with the session cookie and the CSRF token; throws ApiError on 4xx/5xx,
 *  and TimeoutError once ``timeoutS`` pass without a whole answer (a stalled connection otherwise
 *  left "Uploading…" or "Saving…" on the page for good, the buttons disabled). */
export async function api(path, { method = "GET", json, form, timeoutS = 60 } = {}) {
  const headers = { "X-CSRF-Token": csrfToken(), Accept: "application/json" };
  let body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form !== undefined) body = form;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutS * 1000);
  let res, text;
  try {
    res = await fetch(path, { method, headers, body, credentials: "same-origin", signal: abort.signal });
    text = await res.text();
  } catch (e) {
    if (abort.signal.aborted) throw new TimeoutError(`no answer from the server in ${timeoutS} s`);
    throw e;
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  if (!res.ok) throw new ApiError(data?.detail || `request failed (${res.status})`, res.status, data);
  return data;
}

/** A random id for idempotency keys (crypto.randomUUID needs a secure context; this does not). */
export function randomId() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

export const taskData = () => JSON.parse(document.getElementById("task-data").textContent);

/** Stop annotation on an image this browser cannot show as the server knows it: a broken file (no
 *  rendition of it could be made), or one drawn at another shape (an EXIF rotation the browser ignores).
 *  Clicks used to land on a broken-image box or a stretched picture and were stored as points. */
function checkImage(task, viewer) {
  const img = document.getElementById("task-image");
  const refuse = (why) => {
    viewer.disabled = true;
    showError(`${why}: it cannot be annotated in this browser. Skip it (say why), or try another browser.`);
  };
  const check = () => {
    if (!img.naturalWidth) return refuse("This browser cannot show this image");
    const shown = img.naturalWidth / img.naturalHeight, stored = task.width / task.height;
    if (Math.abs(shown / stored - 1) > 0.02) refuse("This browser shows this image rotated or stretched");
  };
  img.addEventListener("error", () => refuse("This browser cannot show this image"));
  if (img.complete) check(); else img.addEventListener("load", check);
}

/** What every task page starts with: its data, the image viewer, active time, heartbeat and skip. */
export function startTask() {
  const task = taskData();
  const viewer = new Viewer(document.getElementById("viewer"));
  checkImage(task, viewer);
  const timer = new ActiveTimer(60, task.active_seconds);
  startHeartbeat(task, timer);
  wireSkip(task, timer);
  return { task, viewer, timer };
}

/** Counts seconds while the page is visible and the annotator did something in the last minute,
 *  on from ``start`` (what the task holds already: a reload must not start again from zero, as the
 *  server keeps the larger of what it has and what it is sent). */
export class ActiveTimer {
  constructor(idleSeconds = 60, start = 0) {
    this.seconds = start; this.last = Date.now(); this.busy = false;
    const touch = () => { this.last = Date.now(); };
    for (const ev of ["pointerdown", "pointermove", "keydown", "wheel"]) addEventListener(ev, touch, { passive: true });
    setInterval(() => {
      const recent = Date.now() - this.last < idleSeconds * 1000;
      if (document.visibilityState === "visible" && (recent || this.busy)) this.seconds += 1;
    }, 1000);
  }
}

/** Keep the lease alive and report active time every minute. A refusal is shown at once (the task
 *  went to someone else, the login ended) instead of only at submit time, when the work is done. */
export function startHeartbeat(task, timer) {
  let shown = false;
  setInterval(() => {
    api(`/api/assignments/${task.id}/heartbeat`, { method: "POST", json: { active_seconds: timer.seconds } })
      .then(() => { if (shown) { showError(""); shown = false; } })
      .catch((e) => {
        if (!(e instanceof ApiError)) return; // offline for a moment: the next beat tries again
        shown = true;
        showError(e.status === 401 || e.status === 403
          ? "You are logged out, so this task cannot be sent from this page: log in again and reload it."
          : e.message);
      });
  }, 60_000);
}

/** Ask for the next task of the project (a real form POST, so the browser follows the redirect). */
let leaving = false; // set when the page moves on itself (saved, skipped): no warning then

/** Ask before the page is left (reload, back, a link) while ``unsaved()`` says work would be lost:
 *  a finished take, clicked points or marks that were not sent. */
export function guardUnsaved(unsaved) {
  addEventListener("beforeunload", (e) => {
    if (!leaving && unsaved()) { e.preventDefault(); e.returnValue = ""; }
  });
}

export function nextTask(projectId) {
  leaving = true;
  const f = document.createElement("form");
  f.method = "post"; f.action = `/projects/${projectId}/next`;
  const t = document.createElement("input");
  t.type = "hidden"; t.name = "csrf_token"; t.value = csrfToken();
  f.append(t); document.body.append(f); f.submit();
}

export function wireSkip(task, timer) {
  document.getElementById("skip")?.addEventListener("click", async () => {
    const reason = prompt("Why skip this image? (optional)") ?? null;
    if (reason === null) return;
    try {
      await api(`/api/assignments/${task.id}/skip`, { method: "POST", json: { reason, active_seconds: timer.seconds } });
      nextTask(task.project_id);
    } catch (e) { showError(e.message); }
  });
}

export function showError(message) {
  const box = document.getElementById("error");
  if (box) box.textContent = message || "";
}

export const isTyping = (el) => el && (el.tagName === "TEXTAREA" || (el.tagName === "INPUT" && !["radio", "checkbox", "hidden"].includes(el.type)));
