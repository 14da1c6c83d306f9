// The page of `lit-mnist serve`: draw on the canvas (mouse, pen or finger) or give an image file, and show
// what POST /predict answers. A drawing is sent as a PNG upload, like any image file, so the server reads
// it with predict's preprocessing; it asks for fit=digit (crop and centre the strokes, as MNIST's digits
// were made), since a drawing has a wide margin around the digit.
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const dropzone = document.getElementById("dropzone");
const hint = document.getElementById("hint");
const fileInput = document.getElementById("file");
const statusLine = document.getElementById("status");
const prediction = document.getElementById("prediction");
const confidence = document.getElementById("confidence");
const bars = document.getElementById("bars");

const SIZE = 280; // the canvas's size in CSS pixels at most; its bitmap is scaled by the screen's density
const scale = Math.min(window.devicePixelRatio || 1, 2);
pad.width = pad.height = Math.round(SIZE * scale);
const INK_WIDTH = pad.width * 0.075;
const SEND_EVERY_MS = 120; // while drawing: at most one request in flight, and none sooner than this

let drawing = false;
let last = null;
let hasInk = false;
let inFlight = false;
let queued = null;
let lastSent = 0;

function paper() {
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, pad.width, pad.height);
}

function clearAll() {
  paper();
  hasInk = false;
  queued = null;
  hint.classList.remove("hidden");
  showClass("\u2013");
  confidence.textContent = "";
  setStatus("");
  for (const row of bars.children) setBar(row, 0, false);
}

function setStatus(text, isError = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", isError);
}

function point(event) {
  const rect = pad.getBoundingClientRect();
  return [(event.clientX - rect.left) * (pad.width / rect.width), (event.clientY - rect.top) * (pad.height / rect.height)];
}

function stroke(from, to) {
  ctx.strokeStyle = "#111111";
  ctx.fillStyle = "#111111";
  ctx.lineWidth = INK_WIDTH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  if (from[0] === to[0] && from[1] === to[1]) {
    ctx.arc(to[0], to[1], INK_WIDTH / 2, 0, 2 * Math.PI);
    ctx.fill();
  } else {
    ctx.moveTo(from[0], from[1]);
    ctx.lineTo(to[0], to[1]);
    ctx.stroke();
  }
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  if (!hasInk) paper(); // an image shown from a file is replaced by the drawing
  drawing = true;
  last = point(event);
  stroke(last, last);
  hasInk = true;
  hint.classList.add("hidden");
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of events.length ? events : [event]) {
    const next = point(e);
    stroke(last, next);
    last = next;
  }
  if (performance.now() - lastSent > SEND_EVERY_MS) sendDrawing();
});

function endStroke() {
  if (!drawing) return;
  drawing = false;
  sendDrawing();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

pad.addEventListener("keydown", (event) => {
  if (event.key === "Escape" || event.key === "Delete" || event.key === "Backspace") {
    event.preventDefault();
    clearAll();
  }
});

document.getElementById("clear").addEventListener("click", clearAll);

function sendDrawing() {
  if (!hasInk) return;
  lastSent = performance.now();
  pad.toBlob((blob) => send(blob, "drawing.png", { fit: "digit" }), "image/png");
}

async function send(blob, name, options) {
  if (inFlight) {
    queued = [blob, name, options]; // only the newest waits
    return;
  }
  inFlight = true;
  const form = new FormData();
  form.append("image", blob, name);
  for (const [key, value] of Object.entries(options)) form.append(key, value);
  try {
    const response = await fetch("predict", { method: "POST", body: form });
    const answer = await response.json().catch(() => ({ detail: `HTTP ${response.status}` }));
    if (!response.ok) {
      setStatus(answer.detail || `HTTP ${response.status}`, true);
    } else {
      show(answer);
      setStatus("");
    }
  } catch (error) {
    setStatus(`The server did not answer (${error.message})`, true);
  } finally {
    inFlight = false;
    if (queued) {
      const next = queued;
      queued = null;
      send(...next);
    }
  }
}

// The class as text in #prediction; a name like torchvision's "7 - seven" shows its "7" large.
function showClass(name) {
  const parts = /^(\S{1,3})( - .+)$/.exec(name);
  prediction.replaceChildren();
  prediction.classList.toggle("long", !parts && name.length > 3);
  if (!parts) {
    prediction.textContent = name;
    return;
  }
  const minor = document.createElement("span");
  minor.className = "minor";
  minor.textContent = parts[2];
  prediction.append(parts[1], minor);
}

function makeBars(names) {
  bars.replaceChildren();
  const longest = Math.max(2, ...names.map((n) => n.length));
  bars.style.setProperty("--name-width", `${Math.min(longest, 14) * 0.62 + 0.4}em`);
  for (const name of names) {
    const row = document.createElement("li");
    row.dataset.name = name;
    row.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
    row.querySelector(".name").textContent = name;
    row.querySelector(".name").title = name;
    setBar(row, 0, false);
    bars.append(row);
  }
}

function setBar(row, p, top) {
  row.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
  row.querySelector(".value").textContent = `${(100 * p).toFixed(1)}%`;
  row.classList.toggle("best", top);
  row.setAttribute("aria-label", `${row.dataset.name}: ${(100 * p).toFixed(1)} percent`);
}

function show(answer) {
  const names = Object.keys(answer.probabilities);
  if (bars.children.length !== names.length) makeBars(names);
  showClass(answer.class_name);
  confidence.textContent = `${(100 * answer.probabilities[answer.class_name]).toFixed(1)}% sure`;
  for (const row of bars.children) {
    setBar(row, answer.probabilities[row.dataset.name] || 0, row.dataset.name === answer.class_name);
  }
}

async function showFile(file) {
  try {
    const bitmap = await createImageBitmap(file);
    paper();
    const k = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const w = bitmap.width * k;
    const h = bitmap.height * k;
    ctx.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    hint.classList.add("hidden");
  } catch {
    // not an image the browser can draw: the server says what is wrong with it
  }
  hasInk = false; // drawing next starts on a clean page
}

function useFile(file) {
  if (!file) return;
  setStatus(`Classifying ${file.name}\u2026`);
  showFile(file);
  send(file, file.name, {});
}

fileInput.addEventListener("change", () => {
  useFile(fileInput.files[0]);
  fileInput.value = "";
});

for (const type of ["dragenter", "dragover"]) {
  dropzone.addEventListener(type, (event) => {
    event.preventDefault();
    dropzone.classList.add("dragging");
  });
}
for (const type of ["dragleave", "drop"]) {
  dropzone.addEventListener(type, () => dropzone.classList.remove("dragging"));
}
dropzone.addEventListener("drop", (event) => {
  event.preventDefault();
  useFile(event.dataTransfer.files[0]);
});

async function describe() {
  try {
    const info = await (await fetch("info")).json();
    const model = info.model;
    const family = ["mnist", "fashion-mnist", "kmnist"].includes(model.dataset);
    document.getElementById("title").textContent = model.dataset === "mnist" ? "Draw a digit" : "Draw or drop an image";
    document.title = `lit_mnist: ${model.dataset}`;
    const size = model.input_shape.slice(1).join("\u00d7");
    document.getElementById("model").textContent =
      `${model.dataset} \u00b7 ${model.network} (${model.format}) \u00b7 ${model.classes.length} classes of ` +
      `${size} ${model.color} images \u00b7 model ${model.sha256.slice(0, 12)}` + (family ? "" : " \u00b7 upload an image like the training images");
    makeBars(model.classes);
  } catch (error) {
    document.getElementById("model").textContent = `Could not read /info (${error.message})`;
  }
}

paper();
describe();
