// Pointing task: click to add a point, click a point to remove it, undo, "not present", live count, submit.
import { api, guardUnsaved, isTyping, nextTask, showError, startTask } from "./common.js";

const { task, viewer, timer } = startTask();

const $ = (id) => document.getElementById(id);
const markers = $("markers"), countEl = $("count"), submitBtn = $("submit"), undoBtn = $("undo"), labelEl = $("label");
let points = [];          // [{x, y, id}] normalised to [0, 1]
const history = [];       // undo stack: {op: "add"|"remove", point, index}
let nextId = 1, busy = false;
guardUnsaved(() => points.length > 0 && task.status === "leased");

function render() {
  markers.replaceChildren();
  points.forEach((p, i) => {
    const m = document.createElement("div");
    m.className = "marker"; m.dataset.id = String(p.id);
    m.style.left = `${p.x * 100}%`; m.style.top = `${p.y * 100}%`;
    m.style.transform = `scale(${1 / viewer.scale})`;
    m.textContent = String(i + 1);
    m.title = "click to remove";
    markers.append(m);
  });
  countEl.textContent = String(points.length);
  undoBtn.disabled = history.length === 0;
  submitBtn.disabled = points.length === 0 || busy;
}

viewer.onClick(({ x, y, inside, target }) => {
  if (task.status !== "leased") return;
  if (target.classList?.contains("marker")) {
    const index = points.findIndex((p) => String(p.id) === target.dataset.id);
    if (index >= 0) { history.push({ op: "remove", point: points[index], index }); points.splice(index, 1); }
  } else if (inside) {
    if (points.length >= task.max_points) { showError(`At most ${task.max_points} points.`); return; }
    const point = { x, y, id: nextId++ };
    points.push(point); history.push({ op: "add", point });
  }
  showError(""); render();
});

function undo() {
  const last = history.pop();
  if (!last) return;
  if (last.op === "add") points = points.filter((p) => p.id !== last.point.id);
  else points.splice(last.index, 0, last.point);
  render();
}

async function send(notPresent) {
  if (busy) return;
  const label = labelEl.value.trim();
  if (!label) { showError("Write what you are pointing at first."); labelEl.focus(); return; }
  busy = true; render(); showError("");
  const method = document.querySelector('input[name="method"]:checked')?.value ?? "pointing";
  try {
    const body = { label, points: notPresent ? [] : points.map((p) => [p.x, p.y]), not_present: notPresent, method, active_seconds: timer.seconds };
    const saved = await api(`/api/assignments/${task.id}/points`, { method: "POST", json: body });
    document.body.dataset.submitted = String(saved.id);
    nextTask(task.project_id);
  } catch (e) {
    showError(e.message); busy = false; render();
  }
}

undoBtn.addEventListener("click", undo);
submitBtn.addEventListener("click", () => send(false));
$("not-present").addEventListener("click", () => {
  if (points.length && !confirm("Discard your points and answer “not present”?")) return;
  send(true);
});
const freeLabel = labelEl.type === "text"; // the annotator names what they point at
addEventListener("keydown", (e) => {
  if (isTyping(e.target)) { if (e.key === "Enter") { e.preventDefault(); if (points.length) send(false); } return; }
  if (freeLabel && !labelEl.value.trim() && e.key.length === 1 && !e.ctrlKey && !e.metaKey && !e.altKey) {
    // typing the label after a click on the image (focus left the field): the letters go to the
    // field, not to the shortcuts ("zebra" undid a point, "n" answered "not present")
    labelEl.focus();
    return;
  }
  if (e.key === "z" || e.key === "Z" || e.key === "Backspace") { e.preventDefault(); undo(); }
  else if (e.key === "n" || e.key === "N") { e.preventDefault(); $("not-present").click(); }
  else if (e.key === "Enter") { e.preventDefault(); if (points.length) send(false); }
});
render();
