// The training job page follows a running job from the API every 3 s (status and log, in
// place), until it finishes or the reader pauses it; a finished job reloads the page once
// to show its candidate and verdict.
(function () {
  "use strict";
  const root = document.getElementById("job");
  if (!root || !root.hasAttribute("data-live")) return;
  const pause = document.getElementById("job-pause");
  let paused = false;
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "resume updates" : "pause updates";
    if (!paused) tick();
  });
  async function tick() {
    if (paused) return;
    try {
      const response = await fetch(root.dataset.api, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.ok) {
        const job = await response.json();
        const log = document.getElementById("job-log");
        const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.textContent = job.log || "(nothing yet)";
        if (atEnd) log.scrollTop = log.scrollHeight;
        if (job.finished_at) { window.location.reload(); return; }
        document.getElementById("job-status").textContent = job.status;
      }
    } finally {
      window.setTimeout(tick, 3000);
    }
  }
  window.setTimeout(tick, 3000);
})();
