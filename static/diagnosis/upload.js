// The upload form, enhanced: files can be dropped on it, and the upload shows its progress.
// Without JavaScript the form posts as usual; with it, the same view answers JSON and the
// page then shows the per-file outcome the server kept for it.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form) return;
  const input = form.querySelector('input[type="file"]');
  const zone = document.getElementById("dropzone");
  const names = document.getElementById("dropzone-files");
  const progress = document.getElementById("upload-progress");
  const status = document.getElementById("upload-status");

  function listFiles() {
    const n = input.files.length;
    names.textContent = n ? n + " file" + (n === 1 ? "" : "s") + " chosen: " +
      Array.from(input.files).map((f) => f.name).join(", ") : "";
  }
  input.addEventListener("change", listFiles);
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault();
    zone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("over")));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      listFiles();
    }
  });

  form.addEventListener("submit", (event) => {
    if (!window.XMLHttpRequest || !window.FormData) return;
    event.preventDefault();
    const request = new XMLHttpRequest();
    request.open("POST", form.action);
    request.setRequestHeader("Accept", "application/json");
    progress.hidden = false;
    progress.value = 0;
    status.textContent = "Uploading…";
    request.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) {
        progress.value = Math.round((100 * e.loaded) / e.total);
        status.textContent = "Uploading… " + progress.value + "%";
      }
    });
    request.upload.addEventListener("load", () => { status.textContent = "Checking the files…"; });
    request.addEventListener("load", () => {
      let body = {};
      try { body = JSON.parse(request.responseText); } catch (e) { body = {}; }
      if (body.files && body.files.length) {
        window.location.assign(body.redirect || window.location.pathname);
        return;
      }
      progress.hidden = true;
      status.textContent = body.summary || "The upload failed (" + request.status + ").";
      status.className = "error";
    });
    request.addEventListener("error", () => {
      progress.hidden = true;
      status.textContent = "The upload could not reach the server; nothing was stored. Try again.";
      status.className = "error";
    });
    request.send(new FormData(form));
  });
})();
