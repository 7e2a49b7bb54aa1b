// The study page's image viewer: one radiograph on a canvas, with zoom and pan, window and
// level, invert, full resolution (1:1) and the Grad-CAM colour layer laid over the image at
// a chosen opacity. No library: the server already renders every study (a DICOM too) to an
// 8-bit image, so the viewer only has to map grey levels and draw; see README "Viewer".
//
// Mouse: wheel zooms at the pointer, drag pans, Shift+drag changes window (left-right) and
// level (up-down). Keys while the canvas has focus: + / - zoom, arrows pan, 0 fits, 1 is
// full resolution, i inverts, h shows or hides the heatmap. Every control is also a button
// or a slider, reachable with Tab.
(function () {
  "use strict";
  const root = document.getElementById("viewer");
  if (!root) return;
  const canvas = root.querySelector("canvas");
  const ctx = canvas.getContext("2d");
  const controls = {
    window: root.querySelector("#viewer-window"),
    level: root.querySelector("#viewer-level"),
    opacity: root.querySelector("#viewer-opacity"),
    layer: root.querySelector("#viewer-layer"),
    invert: root.querySelector('[data-action="invert"]'),
    readout: root.querySelector("#viewer-readout"),
    scale: root.querySelector("#viewer-scale"),
  };
  const state = { scale: 1, x: 0, y: 0, inverted: false, fitted: true };
  let source = null; // {width, height, grey: Uint8ClampedArray of luminance}
  const windowed = document.createElement("canvas"); // the image after window / level
  const layers = {}; // question -> HTMLImageElement (the stored RGBA colour layer)

  function load(url) {
    return new Promise((resolve, reject) => {
      const image = new Image();
      image.onload = () => resolve(image);
      image.onerror = () => reject(new Error("could not load " + url));
      image.src = url;
    });
  }

  function greyOf(image) {
    const scratch = document.createElement("canvas");
    scratch.width = image.naturalWidth;
    scratch.height = image.naturalHeight;
    const c = scratch.getContext("2d");
    c.drawImage(image, 0, 0);
    const rgba = c.getImageData(0, 0, scratch.width, scratch.height).data;
    const grey = new Uint8ClampedArray(scratch.width * scratch.height);
    for (let i = 0, j = 0; j < grey.length; i += 4, j += 1) {
      grey[j] = (rgba[i] * 299 + rgba[i + 1] * 587 + rgba[i + 2] * 114) / 1000;
    }
    return { width: scratch.width, height: scratch.height, grey: grey };
  }

  // Window / level as on a PACS workstation: grey levels within level +- window / 2 are
  // stretched over black to white, the rest clipped; invert swaps black and white.
  function applyWindow() {
    const width = Number(controls.window.value);
    const level = Number(controls.level.value);
    const lut = new Uint8ClampedArray(256);
    for (let v = 0; v < 256; v += 1) {
      let out = ((v - (level - width / 2)) / width) * 255;
      out = Math.max(0, Math.min(255, out));
      lut[v] = state.inverted ? 255 - out : out;
    }
    windowed.width = source.width;
    windowed.height = source.height;
    const c = windowed.getContext("2d");
    const out = c.createImageData(source.width, source.height);
    const px = out.data;
    const grey = source.grey;
    for (let j = 0, i = 0; j < grey.length; j += 1, i += 4) {
      const v = lut[grey[j]];
      px[i] = v; px[i + 1] = v; px[i + 2] = v; px[i + 3] = 255;
    }
    c.putImageData(out, 0, 0);
    controls.readout.textContent = "window " + width + ", level " + level + (state.inverted ? ", inverted" : "");
  }

  function resize() {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(200, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(200, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
  }

  function fit() {
    resize();
    state.scale = Math.min(canvas.width / source.width, canvas.height / source.height);
    state.x = (canvas.width - source.width * state.scale) / 2;
    state.y = (canvas.height - source.height * state.scale) / 2;
    state.fitted = true;
  }

  function zoomAt(factor, cx, cy) {
    const next = Math.max(0.05, Math.min(16, state.scale * factor));
    const f = next / state.scale;
    state.x = cx - (cx - state.x) * f;
    state.y = cy - (cy - state.y) * f;
    state.scale = next;
    state.fitted = false;
    draw();
  }

  function draw() {
    if (!source) return;
    resize();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(state.scale, 0, 0, state.scale, state.x, state.y);
    ctx.imageSmoothingEnabled = state.scale < 1;
    ctx.drawImage(windowed, 0, 0);
    const layer = layers[controls.layer.value];
    if (layer) {
      ctx.imageSmoothingEnabled = true; // the map is coarse: stretch it smoothly
      ctx.globalAlpha = Number(controls.opacity.value) / 100;
      ctx.drawImage(layer, 0, 0, source.width, source.height);
      ctx.globalAlpha = 1;
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    const ratio = window.devicePixelRatio || 1;
    controls.scale.textContent = "zoom " + Math.round((100 * state.scale) / ratio) + "%" +
      (Math.abs(state.scale / ratio - 1) < 1e-6 ? " (full resolution)" : "");
    canvas.dataset.drawn = String(Number(canvas.dataset.drawn || 0) + 1);
  }

  function pan(dx, dy) {
    state.x += dx;
    state.y += dy;
    state.fitted = false;
    draw();
  }

  function act(action) {
    const cx = canvas.width / 2;
    const cy = canvas.height / 2;
    const ratio = window.devicePixelRatio || 1;
    switch (action) {
      case "zoom-in": zoomAt(1.25, cx, cy); break;
      case "zoom-out": zoomAt(0.8, cx, cy); break;
      case "fit": fit(); draw(); break;
      case "actual": zoomAt(ratio / state.scale, cx, cy); break;
      case "invert":
        state.inverted = !state.inverted;
        controls.invert.setAttribute("aria-pressed", String(state.inverted));
        applyWindow(); draw(); break;
      case "reset":
        state.inverted = false;
        controls.invert.setAttribute("aria-pressed", "false");
        controls.window.value = controls.window.defaultValue;
        controls.level.value = controls.level.defaultValue;
        controls.opacity.value = controls.opacity.defaultValue;
        applyWindow(); fit(); draw(); break;
      default: return false;
    }
    return true;
  }

  root.querySelectorAll("[data-action]").forEach((button) => {
    button.addEventListener("click", () => act(button.dataset.action));
  });
  [controls.window, controls.level].forEach((input) => input.addEventListener("input", () => {
    applyWindow();
    draw();
  }));
  controls.opacity.addEventListener("input", draw);
  controls.layer.addEventListener("change", draw);

  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    const box = canvas.getBoundingClientRect();
    const ratio = canvas.width / box.width;
    zoomAt(event.deltaY < 0 ? 1.15 : 1 / 1.15, (event.clientX - box.left) * ratio, (event.clientY - box.top) * ratio);
  }, { passive: false });

  let drag = null;
  canvas.addEventListener("pointerdown", (event) => {
    drag = { x: event.clientX, y: event.clientY, windowing: event.shiftKey };
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const dx = event.clientX - drag.x;
    const dy = event.clientY - drag.y;
    drag.x = event.clientX;
    drag.y = event.clientY;
    if (drag.windowing) {
      controls.window.value = String(Number(controls.window.value) + dx);
      controls.level.value = String(Number(controls.level.value) + dy);
      applyWindow();
      draw();
    } else {
      const ratio = canvas.width / canvas.getBoundingClientRect().width;
      pan(dx * ratio, dy * ratio);
    }
  });
  canvas.addEventListener("pointerup", () => { drag = null; });

  canvas.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const step = canvas.width / 20;
    const keys = {
      "+": () => act("zoom-in"), "=": () => act("zoom-in"), "-": () => act("zoom-out"),
      "0": () => act("fit"), "1": () => act("actual"), "i": () => act("invert"),
      "h": () => {
        const options = Array.from(controls.layer.options).map((o) => o.value);
        const shown = controls.layer.value !== "none";
        controls.layer.value = shown ? "none" : options.find((v) => v !== "none") || "none";
        draw();
      },
      "ArrowLeft": () => pan(step, 0), "ArrowRight": () => pan(-step, 0),
      "ArrowUp": () => pan(0, step), "ArrowDown": () => pan(0, -step),
    };
    if (keys[event.key]) {
      keys[event.key]();
      event.preventDefault();
      event.stopPropagation(); // the review keys do not also see it
    }
  });

  window.addEventListener("resize", () => {
    if (!source) return;
    if (state.fitted) fit();
    draw();
  });

  const wanted = [["pneumonia", root.dataset.heatmap], ["subtype", root.dataset.subtypeHeatmap]];
  Promise.all([load(root.dataset.image), ...wanted.map(([, url]) => (url ? load(url) : null))])
    .then(([image, ...loaded]) => {
      loaded.forEach((layer, i) => { if (layer) layers[wanted[i][0]] = layer; });
      source = greyOf(image);
      root.dataset.naturalWidth = String(source.width);
      applyWindow();
      fit();
      draw();
      root.classList.add("ready");
    })
    .catch((error) => {
      root.querySelector("#viewer-error").textContent = "The image could not be shown: " + error.message;
    });
})();
