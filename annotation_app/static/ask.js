// Ask-the-model task: ask a question, then accept the answer or say what is wrong (the model revises).
import { api, ApiError, MODEL_TIMEOUT_S, nextTask, showError, startTask } from "./common.js";

const { task, timer } = startTask();

const $ = (id) => document.getElementById(id);
let qaId = JSON.parse($("qa-data").textContent).qa_id;
const buttons = ["ask", "accept", "revise"].map($);

async function busy(label, fn) {
  buttons.forEach((b) => { b.disabled = true; });
  $("busy").textContent = label; showError("");
  timer.busy = true;
  try { await fn(); } catch (e) {
    showError(e.message);
    // the exchange moved on without this page (another tab, a revision stored after its reply was
    // lost, which accept then refuses): the page shows what the server holds now, so nothing unread
    // is accepted. Not on a failure of the model (5xx): nothing was stored, and a reload threw away
    // the question or feedback just typed, with the message asking to try again
    if (e instanceof ApiError && e.status === 409) {
      showError(`${e.message} — showing the exchange as it is now…`);
      setTimeout(() => location.reload(), 1500);
    }
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
    $("busy").textContent = ""; timer.busy = false;
  }
}

function show(qa) {
  qaId = qa.id;
  $("answer").textContent = qa.answer;
  $("answer-card").hidden = false;
  const history = $("history");
  history.replaceChildren(...qa.revisions.map((r) => {
    const p = document.createElement("p");
    p.textContent = `Earlier answer: “${r.answer}” — you said: “${r.feedback}”`;
    return p;
  }));
  $("feedback").value = "";
}

// an edited question is a new question: the answer shown was to the old one
$("question").addEventListener("input", () => { $("answer-card").hidden = true; });

$("ask").addEventListener("click", () => {
  const question = $("question").value.trim();
  if (!question) { showError("Write a question first."); return; }
  busy("The model is thinking…", async () => {
    show(await api(`/api/assignments/${task.id}/ask`, { method: "POST", json: { question }, timeoutS: MODEL_TIMEOUT_S }));
  });
});

$("revise").addEventListener("click", () => {
  const feedback = $("feedback").value.trim();
  if (!feedback) { showError("Say what is wrong with the answer."); return; }
  busy("The model is revising…", async () => {
    show(await api(`/api/qa/${qaId}/revise`, { method: "POST", json: { feedback }, timeoutS: MODEL_TIMEOUT_S }));
  });
});

$("accept").addEventListener("click", () => busy("Saving…", async () => {
  const qa = await api(`/api/qa/${qaId}/accept`, { method: "POST",
    json: { active_seconds: timer.seconds, answer: $("answer").textContent } });
  document.body.dataset.submitted = String(qa.id);
  nextTask(task.project_id);
}));
