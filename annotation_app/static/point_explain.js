// Point-explanation task: a question, marks (a label and its points each), the model's answer citing
// the marks as [1], [2], ...; accept it, or change the question or the marks and ask again.
import { api, guardUnsaved, isTyping, MODEL_TIMEOUT_S, nextTask, showError, startTask } from "./common.js";

const { task, viewer, timer } = startTask();

const $ = (id) => document.getElementById(id);
const labelEl = $("label"), questionEl = $("question");
let marks = [];   // [{label, points: [[x, y], ...]}], cited [1], [2], ... in this order
let draft = [];   // the points of the mark being made: [{x, y, id}]
let nextId = 1, busy = false, qaId = null;
guardUnsaved(() => (marks.length > 0 || draft.length > 0) && task.status === "leased");

function marker(x, y, text, cls) {
  const m = document.createElement("div");
  m.className = `marker ${cls}`;
  m.style.left = `${x * 100}%`; m.style.top = `${y * 100}%`;
  m.style.transform = `scale(${1 / viewer.scale})`;
  m.textContent = text;
  return m;
}

function render() {
  const items = [];
  marks.forEach((mark, i) => mark.points.forEach(([x, y]) => items.push(marker(x, y, String(i + 1), "marked"))));
  draft.forEach((p) => {
    const m = marker(p.x, p.y, String(marks.length + 1), "draft");
    m.dataset.id = String(p.id); m.title = "click to remove";
    items.push(m);
  });
  $("markers").replaceChildren(...items);
  $("marks").replaceChildren(...marks.map((mark, i) => {
    const li = document.createElement("li");
    const n = mark.points.length;
    li.append(`[${i + 1}] ${mark.label} (${n} point${n === 1 ? "" : "s"}) `);
    const remove = document.createElement("button");
    remove.type = "button"; remove.className = "btn"; remove.textContent = "Remove"; remove.disabled = busy;
    remove.addEventListener("click", () => { marks.splice(i, 1); changed(); });
    li.append(remove);
    return li;
  }));
  $("count").textContent = String(draft.length);
  $("undo").disabled = draft.length === 0 || busy;
  $("add-mark").disabled = draft.length === 0 || busy;
  $("ask").disabled = (marks.length === 0 && draft.length === 0) || busy;
  $("accept").disabled = busy;
  // what was asked stays as it was sent while the model answers: the answer is for that
  questionEl.readOnly = busy; labelEl.readOnly = busy;
}

function changed() {
  // the answer on screen cites the old marks: it cannot be accepted for the new ones
  $("answer-card").hidden = true;
  showError(""); render();
}

viewer.onClick(({ x, y, inside, target }) => {
  if (task.status !== "leased" || busy) return;
  if (target.classList?.contains("draft")) {
    draft = draft.filter((p) => String(p.id) !== target.dataset.id);
  } else if (inside && !target.classList?.contains("marked")) {
    if (draft.length >= task.max_points) { showError(`At most ${task.max_points} points in a mark.`); return; }
    draft.push({ x, y, id: nextId++ });
  }
  showError(""); render();
});

/** The mark being made joins the list; false (and a message) when it cannot. */
function addMark() {
  if (!draft.length) return true;
  const label = labelEl.value.trim();
  if (!label) { showError("Say what you marked first."); labelEl.focus(); return false; }
  marks.push({ label, points: draft.map((p) => [p.x, p.y]) });
  draft = []; labelEl.value = "";
  changed();
  return true;
}

async function whileBusy(label, fn) {
  busy = true; $("busy").textContent = label; showError(""); timer.busy = true; render();
  try { await fn(); } catch (e) { showError(e.message); } finally {
    busy = false; $("busy").textContent = ""; timer.busy = false; render();
  }
}

function show(qa) {
  qaId = qa.id;
  $("answer").textContent = qa.text ?? qa.answer;
  $("answer-card").hidden = false;
}

$("undo").addEventListener("click", () => { draft.pop(); render(); });
$("add-mark").addEventListener("click", addMark);
labelEl.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); addMark(); } });
questionEl.addEventListener("input", () => { if (!$("answer-card").hidden) changed(); });

$("ask").addEventListener("click", () => {
  const question = questionEl.value.trim();
  if (!question) { showError("Write a question first."); questionEl.focus(); return; }
  if (!addMark()) return;
  if (!marks.length) { showError("Mark at least one thing the answer should point at."); return; }
  whileBusy("The model is thinking…", async () => {
    show(await api(`/api/assignments/${task.id}/explain`, { method: "POST", json: { question, marks }, timeoutS: MODEL_TIMEOUT_S }));
  });
});

$("accept").addEventListener("click", () => whileBusy("Saving…", async () => {
  const qa = await api(`/api/qa/${qaId}/accept`, { method: "POST", json: { active_seconds: timer.seconds } });
  document.body.dataset.submitted = String(qa.id);
  nextTask(task.project_id);
}));

addEventListener("keydown", (e) => {
  if (isTyping(e.target)) return;
  if (e.key === "z" || e.key === "Z" || e.key === "Backspace") { e.preventDefault(); draft.pop(); render(); }
});

// back on a page left with an answer on it: the question, the marks and the answer as they were
const current = JSON.parse($("qa-data").textContent);
if (current) {
  questionEl.value = current.question;
  marks = current.marks ?? [];
  show(current);
}
render();
