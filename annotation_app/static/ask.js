// Ask-the-model task: ask a question, then accept the answer or say what is wrong (the model revises).
import { api, nextTask, showError, startTask } from "./common.js";

const { task, timer } = startTask();

const $ = (id) => document.getElementById(id);
let qaId = JSON.parse($("qa-data").textContent).qa_id;
const buttons = ["ask", "accept", "revise"].map($);

async function busy(label, fn) {
  buttons.forEach((b) => { b.disabled = true; });
  $("busy").textContent = label; showError("");
  timer.busy = true;
  try { await fn(); } catch (e) { showError(e.message); } finally {
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

$("ask").addEventListener("click", () => {
  const question = $("question").value.trim();
  if (!question) { showError("Write a question first."); return; }
  busy("The model is thinking…", async () => {
    show(await api(`/api/assignments/${task.id}/ask`, { method: "POST", json: { question } }));
  });
});

$("revise").addEventListener("click", () => {
  const feedback = $("feedback").value.trim();
  if (!feedback) { showError("Say what is wrong with the answer."); return; }
  busy("The model is revising…", async () => {
    show(await api(`/api/qa/${qaId}/revise`, { method: "POST", json: { feedback } }));
  });
});

$("accept").addEventListener("click", () => busy("Saving…", async () => {
  const qa = await api(`/api/qa/${qaId}/accept`, { method: "POST", json: { active_seconds: timer.seconds } });
  document.body.dataset.submitted = String(qa.id);
  nextTask(task.project_id);
}));
