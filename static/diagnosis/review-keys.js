// Keyboard shortcuts on a study opened from the worklist: n / p choose the label,
// b / v / d pneumonia with its subtype (bacterial, viral, undetermined), u marks the image
// unusable (poor quality), s saves, j skips to the next case.
(function () {
  "use strict";
  document.addEventListener("keydown", function (event) {
    const target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (target.tagName === "TEXTAREA" || target.tagName === "INPUT" || target.tagName === "SELECT") return;
    const form = document.getElementById("review-form");
    const pick = (value, name = "label") => {
      const radio = form.querySelector('input[name="' + name + '"][value="' + value + '"]');
      if (radio) radio.checked = true;
    };
    const pneumonia = (subtype) => { pick("PNEUMONIA"); pick(subtype, "subtype"); };
    switch (event.key) {
      case "n": pick("NORMAL"); pick("", "subtype"); break;
      case "p": pick("PNEUMONIA"); break;
      case "b": pneumonia("bacterial"); break;
      case "v": pneumonia("viral"); break;
      case "d": pneumonia("undetermined"); break;
      case "u": form.querySelector('select[name="unusable_reason"]').value = "poor_quality"; break;
      case "s": form.requestSubmit(); break;
      case "j": document.getElementById("next-case").click(); break;
      default: return;
    }
    event.preventDefault();
  });
})();
