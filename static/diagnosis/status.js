// Keeps study statuses current without a manual reload: every element with
// data-study-id whose status is pending or running, or whose heatmap is still owed
// (data-heatmap-due), is refreshed from the API.
(function () {
  "use strict";
  const OPEN = new Set(["pending", "running", ""]);
  const INTERVAL_MS = 1500;

  // The probability bar the server draws (templates/diagnosis/parts/probability_bar.html).
  function bar(prediction, call) {
    const clamp = (v) => Math.max(0, Math.min(100, 100 * v)).toFixed(1) + "%";
    const outer = document.createElement("span");
    outer.className = "pbar pbar-" + call.tone;
    outer.setAttribute("role", "img");
    outer.setAttribute("aria-label", "probability " + call.percent + "%, operating point " +
      call.threshold_percent + "%" + (call.borderline ? ", borderline" : ""));
    const fill = document.createElement("span");
    fill.className = "pbar-fill";
    fill.style.width = clamp(prediction.probability);
    const tick = document.createElement("span");
    tick.className = "pbar-tick";
    tick.style.left = clamp(prediction.threshold);
    outer.append(fill, tick);
    const text = document.createDocumentFragment();
    text.append(outer, " " + call.percent + "%");
    if (call.borderline) {
      const mark = document.createElement("span");
      mark.className = "borderline-mark";
      mark.textContent = "borderline";
      text.append(" ", mark);
    }
    return text;
  }

  async function refresh(el) {
    const response = await fetch(el.dataset.api, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    if (!response.ok) return;
    const study = await response.json();
    const prediction = study.prediction || {};
    const status = study.status;
    const changed = status !== el.dataset.status;
    el.dataset.status = status;
    const set = (field, value) => {
      const cell = el.querySelector('[data-field="' + field + '"]');
      if (cell) cell.textContent = value;
    };
    set("status", status);
    const statusCell = el.querySelector('[data-field="status"]');
    if (statusCell) statusCell.className = "status status-" + status;
    if (status === "done") {
      const call = prediction.call;
      set("label", call ? call.headline : prediction.label || "");
      const cell = el.querySelector('[data-field="probability"]');
      if (cell && call) cell.replaceChildren(bar(prediction, call));
      const sub = prediction.subtype_call;
      set("subtype", sub ? sub.headline : "");
    }
    const heatmapDrawn = el.hasAttribute("data-heatmap-due") && !prediction.heatmap_due;
    if (heatmapDrawn) el.removeAttribute("data-heatmap-due");
    // The study page shows the full result, which is simplest to render on the server.
    const final = (changed && !OPEN.has(status)) || heatmapDrawn;
    if (final && el.hasAttribute("data-reload-when-final")) {
      window.location.reload();
    }
  }

  function open(el) {
    return OPEN.has(el.dataset.status || "") || el.hasAttribute("data-heatmap-due");
  }

  function tick() {
    const pending = Array.from(document.querySelectorAll("[data-study-id]")).filter(open);
    Promise.allSettled(pending.map(refresh)).finally(() => {
      if (pending.length) window.setTimeout(tick, INTERVAL_MS);
    });
  }

  document.addEventListener("DOMContentLoaded", tick);
})();
