"""The upload page served at ``/``: one self-contained HTML document (inline CSS and JS).

Nothing is fetched from elsewhere (no CDN, fonts or images), so the page works on an offline
machine. It is a Python string rather than a package data file so that it ships inside any
wheel without packaging configuration.

Stable element ids (tests and scripts rely on them): ``#file`` (the file input), ``#drop`` (drop
zone), ``#api-key``, ``#status``, ``#error``, ``#model``, ``#result`` (hidden until a result),
``#ood-warning`` (shown when the image is flagged out-of-distribution), ``#predicted``,
``#probability``, ``#bars`` (one ``.bar`` row per class, ``data-class`` = name),
``#heatmap`` (Grad-CAM overlay), ``#preview`` and ``#timing``; with several files ``#list`` holds one
``.item`` per file (``data-file`` = its name, ``.selected`` = the one shown above). ``body[data-state]``
is ``idle``, ``busy``, ``done`` or ``error``.

Several files (chosen or dropped together) go in one request, up to the server's ``max_files``
(from ``GET /v1/model``; the API takes 16 by default); the page says when it sent fewer than given.

The Content-Security-Policy :data:`PAGE_CSP` allows exactly the inline script and style below
(by SHA-256 hash) and requests to this server only; server text is inserted with
``textContent``, never as HTML.
"""

from __future__ import annotations

import base64
import hashlib

_STYLE = """
:root { font-family: system-ui, sans-serif; color: #1d232b; background: #f5f7fa; }
body { max-width: 46rem; margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.4rem; margin-bottom: .2rem; }
#model { color: #56606d; font-size: .9rem; margin-bottom: 1rem; }
#drop { display: block; border: 2px dashed #8a96a6; border-radius: .6rem; padding: 1.6rem; text-align: center;
        background: #fff; cursor: pointer; }
#drop.over { border-color: #2463d1; background: #eaf1fd; }
#list { padding-left: 1.2rem; margin: 0 0 .8rem; font-size: .9rem; }
#list .item { cursor: pointer; padding: .1rem 0; }
#list .item.selected { font-weight: 600; }
#file { margin-top: .6rem; }
details { margin: .8rem 0; font-size: .9rem; }
#status { min-height: 1.4rem; margin: .6rem 0; color: #56606d; }
#error { color: #a4161a; background: #fde8e8; border-radius: .4rem; padding: .6rem .8rem; }
#result { background: #fff; border-radius: .6rem; padding: 1rem 1.2rem; box-shadow: 0 1px 3px #0002; }
#predicted { font-size: 1.5rem; font-weight: 600; }
#ood-warning { color: #7a4b00; background: #fff4d6; border-radius: .4rem; padding: .6rem .8rem; margin-bottom: .6rem; }
#probability { color: #56606d; margin-left: .5rem; }
.bar { display: grid; grid-template-columns: 11rem 1fr 4.2rem; gap: .6rem; align-items: center; margin: .35rem 0; }
.bar .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.bar .track { background: #e3e8ef; border-radius: .3rem; height: .9rem; overflow: hidden; }
.bar .fill { background: #2463d1; height: 100%; width: 0; }
.bar.top .fill { background: #0f8a5f; }
.bar .value { text-align: right; font-variant-numeric: tabular-nums; }
.images { display: flex; gap: 1rem; margin-top: 1rem; flex-wrap: wrap; }
.images figure { margin: 0; }
.images img { width: 14rem; height: 14rem; object-fit: contain; image-rendering: pixelated; background: #000;
              border-radius: .3rem; }
figcaption { font-size: .85rem; color: #56606d; text-align: center; }
#timing { font-size: .8rem; color: #56606d; margin-top: .8rem; }
"""

_SCRIPT = """
"use strict";
const $ = (id) => document.getElementById(id);
let previewUrl = null;

function setState(state, text) {
  document.body.dataset.state = state;
  $("status").textContent = text || "";
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

function showError(message) {
  $("result").hidden = true;
  $("error").textContent = message;
  $("error").hidden = false;
  if (/API key/.test(message)) { $("key-box").open = true; }
  setState("error", "");
}

async function loadModel() {
  try {
    const response = await fetch("/v1/model", { headers: authHeaders() });
    const info = await response.json();
    if (!response.ok) {
      $("model").textContent = info.error || ("HTTP " + response.status);
      if (response.status === 401) { $("key-box").open = true; }
      return;
    }
    if (info.limits && info.limits.max_files) { maxFiles = info.limits.max_files; }
    const size = info.input_size ? " \\u00b7 input " + info.input_size + " px" : "";
    $("model").textContent = (info.architecture || "model") + " (" + (info.backend || "") + ") \\u00b7 " +
      (info.task || "") +
      " \\u00b7 classes: " + (info.class_names || []).join(", ") + size +
      (info.version ? " \\u00b7 version " + String(info.version).slice(0, 12) : "");
  } catch (err) {
    $("model").textContent = "model information unavailable: " + err;
  }
}

function renderBars(probabilities, predicted) {
  const bars = $("bars");
  bars.replaceChildren();
  for (const [name, p] of Object.entries(probabilities)) {
    const row = document.createElement("div");
    row.className = "bar" + (name === predicted ? " top" : "");
    row.dataset.class = name;
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    label.title = name;
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = (100 * p).toFixed(1) + "%";
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = (100 * p).toFixed(1) + " %";
    row.append(label, track, value);
    bars.append(row);
  }
}

let maxFiles = 16;  // the API's default; GET /v1/model tells this server's
let shown = { files: [], body: null };

async function classify(fileList) {
  const given = Array.from(fileList || []);
  if (!given.length) { return; }
  const files = given.slice(0, maxFiles);
  $("error").hidden = true;
  $("result").hidden = true;
  setState("busy", "Classifying " + (files.length === 1 ? files[0].name : files.length + " files") + " \\u2026");
  const form = new FormData();
  for (const file of files) { form.append("files", file, file.name); }
  let response, body;
  try {
    response = await fetch("/v1/predict?explain=true", { method: "POST", body: form, headers: authHeaders() });
    body = await response.json();
  } catch (err) {
    showError("request failed: " + err);
    return;
  }
  if (!response.ok) { showError(body.error || ("HTTP " + response.status)); return; }
  shown = { files: files, body: body };
  renderList(files, body.predictions);
  show(0);
  const t = body.timing_ms;
  $("timing").textContent = "decode " + t.decode.toFixed(1) + " ms \\u00b7 inference " + t.inference.toFixed(1) +
    " ms \\u00b7 Grad-CAM " + (t.explain || 0).toFixed(1) + " ms \\u00b7 total " + t.total.toFixed(1) + " ms" +
    (files.length > 1 ? " (" + files.length + " files)" : "");
  $("result").hidden = false;
  setState("done", given.length > files.length ?
    "Sent the first " + files.length + " of " + given.length + " files (the server takes " + maxFiles +
    " per request)." : "");
}

function renderList(files, predictions) {
  const list = $("list");
  list.replaceChildren();
  list.hidden = files.length < 2;
  predictions.forEach((prediction, i) => {
    const item = document.createElement("li");
    item.className = "item";
    item.dataset.file = files[i].name;
    item.textContent = files[i].name + ": " + prediction.predicted + " (" +
      (100 * prediction.probability).toFixed(1) + " %)";
    item.addEventListener("click", () => show(i));
    list.append(item);
  });
}

function show(i) {
  const prediction = shown.body.predictions[i];
  const file = shown.files[i];
  for (const [k, item] of Array.from($("list").children).entries()) { item.classList.toggle("selected", k === i); }
  // Out-of-distribution flag (issue 19): the image is unlike the training images.
  $("ood-warning").hidden = prediction.ood !== true;
  $("predicted").textContent = prediction.predicted;
  $("probability").textContent = (100 * prediction.probability).toFixed(1) + " %";
  renderBars(prediction.probabilities, prediction.predicted);
  $("heatmap").src = "data:image/png;base64," + prediction.overlay_png;
  if (previewUrl) { URL.revokeObjectURL(previewUrl); }
  previewUrl = URL.createObjectURL(file);
  $("preview").src = previewUrl;
}

$("file").addEventListener("change", (event) => classify(event.target.files));
$("preview").addEventListener("error", () => { $("preview-box").hidden = true; });
$("preview").addEventListener("load", () => { $("preview-box").hidden = false; });
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  classify(event.dataTransfer.files);
});
$("api-key").addEventListener("change", loadModel);
setState("idle", "");
loadModel();
"""

_BODY = """
<h1>medlens</h1>
<div id="model">loading model information&hellip;</div>
<label id="drop" for="file">
  Drop images here, or choose files<br>
  <input id="file" type="file" multiple
         accept=".png,.jpg,.jpeg,.bmp,.tif,.tiff,.dcm,.dicom,.nii,.nii.gz,.npy,image/*">
</label>
<details id="key-box"><summary>API key</summary>
  <input id="api-key" type="password" autocomplete="off" placeholder="X-API-Key (only if the server requires one)">
</details>
<div id="status" role="status" aria-live="polite"></div>
<div id="error" role="alert" hidden></div>
<section id="result" hidden>
  <ol id="list" hidden></ol>
  <div id="ood-warning" role="alert" hidden>This image is unlike the images the model was trained on
    (out-of-distribution score above its threshold): the prediction below may not hold.</div>
  <div><span id="predicted"></span><span id="probability"></span></div>
  <div id="bars"></div>
  <div class="images">
    <figure id="preview-box" hidden><img id="preview" alt="uploaded image"><figcaption>uploaded</figcaption></figure>
    <figure><img id="heatmap" alt="Grad-CAM heatmap over the model input"><figcaption>Grad-CAM
      (model input)</figcaption></figure>
  </div>
  <div id="timing"></div>
</section>
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


PAGE_HTML = (
    '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    '<title>medlens</title>\n<link rel="icon" href="data:,">\n'
    f"<style>{_STYLE}</style>\n</head>\n<body>{_BODY}<script>{_SCRIPT}</script>\n</body>\n</html>\n"
)

# Only this page's own script and style run; requests go to this server only.
PAGE_CSP = (
    f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
    "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
