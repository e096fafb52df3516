// Review page: approve, or reject with a reason; the card shows the verdict.
import { api } from "./common.js";

for (const card of document.querySelectorAll(".review-item")) {
  const error = card.querySelector(".alert");
  card.querySelectorAll("[data-verdict]").forEach((btn) => btn.addEventListener("click", async () => {
    const verdict = btn.dataset.verdict;
    const reason = card.querySelector('input[name="reason"]').value.trim();
    if (verdict === "rejected" && !reason) { error.textContent = "Say why you reject it."; return; }
    error.textContent = "";
    // the card's controls are off while the verdict is on its way: a second click (the other
    // verdict, or a double click) stored a second review, and the card showed the first
    const controls = card.querySelectorAll("button, input");
    controls.forEach((el) => { el.disabled = true; });
    try {
      await api("/api/reviews", { method: "POST", json: {
        target_type: card.dataset.targetType, target_id: Number(card.dataset.targetId), verdict, reason } });
      card.dataset.verdict = verdict;
      card.style.opacity = "0.55";
      const done = document.createElement("div");
      done.className = `alert ${verdict === "approved" ? "ok" : "error"}`;
      done.setAttribute("role", "status");
      done.textContent = verdict === "approved" ? "Approved" : `Rejected: ${reason}`;
      error.replaceWith(done);
    } catch (e) {
      error.textContent = e.message;
      controls.forEach((el) => { el.disabled = false; });
    }
  }));
}
