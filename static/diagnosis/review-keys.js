// Keyboard shortcuts on a study opened from the worklist: n / p choose the label,
// u marks the image unusable (poor quality), s saves, j skips to the next case.
(function () {
  "use strict";
  document.addEventListener("keydown", function (event) {
    const target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (target.tagName === "TEXTAREA" || target.tagName === "INPUT" || target.tagName === "SELECT") return;
    const form = document.getElementById("review-form");
    const pick = (value) => {
      const radio = form.querySelector('input[name="label"][value="' + value + '"]');
      if (radio) radio.checked = true;
    };
    switch (event.key) {
      case "n": pick("NORMAL"); break;
      case "p": pick("PNEUMONIA"); break;
      case "u": form.querySelector('select[name="unusable_reason"]').value = "poor_quality"; break;
      case "s": form.requestSubmit(); break;
      case "j": document.getElementById("next-case").click(); break;
      default: return;
    }
    event.preventDefault();
  });
})();
