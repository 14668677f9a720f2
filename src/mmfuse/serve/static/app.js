// The mmfuse page: ask the model about its inputs (one per modality it takes, from /info: image,
// text, audio, ...), show top-k, each input's contribution and the explanation (the heatmap drawn
// over the image, the question's words coloured by their effect), and search the index when the
// server has one. Audio can also be recorded from the microphone: Web Audio collects Float32
// samples and they are sent as a 16-bit PCM mono WAV (the server decodes WAV / FLAC / OGG, not the
// WebM / Opus of MediaRecorder). A caption model's server (/info says task "caption") gets an image
// input and its caption instead. Plain DOM, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("mmfuse-token") || "";
let info = null; // the server's /info once loaded
const captioning = () => info && info.task === "caption";

const RECORD_RATE = 16000; // the rate of the WAV we send (the models' rate; smaller uploads)

function headers() {
  return token ? { Authorization: "Bearer " + token } : {};
}

async function call(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  const body = await response.json().catch(() => ({ message: response.statusText }));
  if (response.status === 401) $("auth").hidden = false;
  if (!response.ok) {
    const where = body.field ? body.field + ": " : "";
    throw new Error(where + (body.message || response.statusText));
  }
  return body;
}

function showError(error) {
  $("error").textContent = error ? String(error.message || error) : "";
  $("error").hidden = !error;
}

const percent = (x) => (100 * x).toFixed(1) + "%";
const title = (word) => word[0].toUpperCase() + word.slice(1);
const article = (word) => (/^[aeiou]/i.test(word) ? "an " : "a ") + word;

function element(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

// ----- the inputs, built from /info ------------------------------------------------------------

// File extensions for the file chooser, from the accepted format names.
const EXTRA_EXTENSIONS = { JPEG: [".jpg"], OGG: [".oga", ".opus"], WAV: [".wave"] };

function acceptFor(name, input) {
  if (!input.formats.length) return name + "/*";
  return input.formats.flatMap((f) => ["." + f.toLowerCase(), ...(EXTRA_EXTENSIONS[f] || [])]).join(",");
}

function previewOf(name) {
  // Images and sounds can be shown; other files only by name.
  if (name === "image") return element("img", { id: "preview-" + name, class: "preview", alt: "", hidden: true });
  if (name === "audio") return element("audio", { id: "preview-" + name, class: "preview", controls: true, hidden: true });
  return element("span", { id: "preview-" + name, hidden: true });
}

function fileInput(name, input) {
  const file = element("input", { id: name, name, type: "file", accept: acceptFor(name, input) });
  const hint = element("span", { id: "hint-" + name, class: "drop-hint" },
    `Drop ${article(name)} file here, or click to choose one`);
  const drop = element("label", { id: "drop-" + name, class: "drop", htmlFor: name, tabIndex: 0 }, hint, file);
  const field = element("div", { id: "field-" + name, class: "field" }, element("span", { class: "name" }, title(name)), drop);
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) setFile(name, e.dataTransfer.files[0]);
  });
  file.addEventListener("change", () => showFile(name, file.files[0]));
  const row = element("div", { class: "file-row" }, previewOf(name));
  if (name === "audio") row.append(...recordControls(name, input));
  field.append(row, element("p", { class: "muted help" }, input.help));
  return field;
}

function textInput(name, input) {
  const max = Object.entries(input.limits).find(([key]) => key.endsWith("_chars"));
  const box = element("input", { id: name, name, type: "text", placeholder: input.help });
  if (max) box.maxLength = max[1];
  const label = element("label", { htmlFor: name, class: "name" }, title(name));
  return element("div", { id: "field-" + name, class: "field" }, label, box);
}

function buildInputs() {
  const inputs = $("inputs");
  inputs.replaceChildren();
  for (const name of info.modalities) {
    const input = info.inputs[name];
    inputs.append(input.kind === "file" ? fileInput(name, input) : textInput(name, input));
  }
}

function setFile(name, file) {
  const transfer = new DataTransfer();
  transfer.items.add(file);
  $(name).files = transfer.files;
  showFile(name, file);
}

function showFile(name, file) {
  const preview = $("preview-" + name);
  if (!file) return;
  if (preview.tagName === "SPAN") preview.textContent = file.name;
  else preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("hint-" + name).textContent = file.name;
}

// ----- recording: microphone -> Float32 samples -> 16-bit PCM mono WAV ----------------------------

// An AudioWorklet that hands each render quantum (mixed down to mono) to the page.
const COLLECTOR = `
class MmfuseCollect extends AudioWorkletProcessor {
  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length) {
      const mono = new Float32Array(channels[0].length);
      for (const channel of channels) for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / channels.length;
      this.port.postMessage(mono, [mono.buffer]);
    }
    return true;
  }
}
registerProcessor("mmfuse-collect", MmfuseCollect);
`;

const recording = { active: null }; // {stream, context, nodes, chunks, rate, timer}

function recordControls(name, input) {
  const button = element("button", { id: "record-" + name, type: "button", class: "record" }, "● Record");
  const status = element("span", { id: "record-status-" + name, class: "muted" });
  const maxSeconds = input.limits.max_audio_seconds || 30;
  button.addEventListener("click", async () => {
    showError(null);
    try {
      if (recording.active) await stopRecording(name);
      else await startRecording(name, maxSeconds);
    } catch (error) {
      await cleanupRecording().catch(() => {});
      button.textContent = "● Record";
      button.classList.remove("on");
      status.textContent = "";
      showError("recording: " + (error.message || error));
    }
  });
  if (!(navigator.mediaDevices && navigator.mediaDevices.getUserMedia)) {
    button.disabled = true;
    status.textContent = "recording needs https (or localhost)";
  }
  return [button, status];
}

async function audioContext(stream) {
  // Ask for 16 kHz so the browser resamples with its own filter; fall back to the device rate
  // (and resample below) where a context cannot take a stream at another rate.
  for (const options of [{ sampleRate: RECORD_RATE }, {}]) {
    let context;
    try {
      context = new AudioContext(options);
      return { context, source: context.createMediaStreamSource(stream) };
    } catch (error) {
      if (context) context.close();
    }
  }
  throw new Error("this browser cannot read the microphone stream");
}

async function startRecording(name, maxSeconds) {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const { context, source } = await audioContext(stream);
  const state = { stream, context, chunks: [], rate: context.sampleRate, nodes: [source], timer: null };
  recording.active = state;
  const silent = context.createGain(); // keeps the graph pulled without playing the microphone back
  silent.gain.value = 0;
  silent.connect(context.destination);
  state.nodes.push(silent);
  if (context.audioWorklet && window.AudioWorkletNode) {
    const url = URL.createObjectURL(new Blob([COLLECTOR], { type: "text/javascript" }));
    await context.audioWorklet.addModule(url);
    URL.revokeObjectURL(url);
    const node = new AudioWorkletNode(context, "mmfuse-collect", { numberOfOutputs: 1, channelCount: 1 });
    node.port.onmessage = (event) => state.chunks.push(event.data);
    source.connect(node).connect(silent);
    state.nodes.push(node);
  } else { // older browsers: the deprecated ScriptProcessorNode
    const node = context.createScriptProcessor(4096, 1, 1);
    node.onaudioprocess = (event) => state.chunks.push(new Float32Array(event.inputBuffer.getChannelData(0)));
    source.connect(node).connect(silent);
    state.nodes.push(node);
  }
  await context.resume();
  const started = performance.now();
  $("record-" + name).textContent = "■ Stop";
  $("record-" + name).classList.add("on");
  state.timer = setInterval(() => {
    const seconds = (performance.now() - started) / 1000;
    $("record-status-" + name).textContent = `recording… ${seconds.toFixed(1)} s (max ${maxSeconds} s)`;
    if (seconds >= maxSeconds) stopRecording(name).catch(showError);
  }, 100);
  state.maxSeconds = maxSeconds;
}

async function cleanupRecording() {
  const state = recording.active;
  recording.active = null;
  if (!state) return null;
  clearInterval(state.timer);
  for (const node of state.nodes) node.disconnect();
  for (const track of state.stream.getTracks()) track.stop();
  await state.context.close();
  return state;
}

async function stopRecording(name) {
  const state = await cleanupRecording();
  $("record-" + name).textContent = "● Record";
  $("record-" + name).classList.remove("on");
  if (!state) return;
  const length = state.chunks.reduce((n, chunk) => n + chunk.length, 0);
  const samples = new Float32Array(length);
  let offset = 0;
  for (const chunk of state.chunks) { samples.set(chunk, offset); offset += chunk.length; }
  const wave = resample(samples, state.rate, RECORD_RATE).subarray(0, Math.floor(state.maxSeconds * RECORD_RATE));
  if (!wave.length) throw new Error("nothing was recorded");
  const file = new File([encodeWav(wave, RECORD_RATE)], "recording.wav", { type: "audio/wav" });
  setFile(name, file);
  $("record-status-" + name).textContent = `recorded ${(wave.length / RECORD_RATE).toFixed(1)} s`;
}

function resample(samples, from, to) {
  if (from === to) return samples;
  const out = new Float32Array(Math.floor((samples.length * to) / from));
  const step = from / to;
  for (let i = 0; i < out.length; i++) {
    if (step > 1) { // down: the mean over each output sample's span (a crude low-pass)
      const start = Math.floor(i * step), end = Math.max(start + 1, Math.floor((i + 1) * step));
      let sum = 0;
      for (let j = start; j < end && j < samples.length; j++) sum += samples[j];
      out[i] = sum / (end - start);
    } else { // up: linear interpolation
      const x = i * step, j = Math.floor(x), f = x - j;
      out[i] = samples[j] + ((samples[Math.min(j + 1, samples.length - 1)] - samples[j]) * f);
    }
  }
  return out;
}

function encodeWav(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + 2 * samples.length));
  const ascii = (offset, text) => { for (let i = 0; i < text.length; i++) view.setUint8(offset + i, text.charCodeAt(i)); };
  ascii(0, "RIFF");
  view.setUint32(4, 36 + 2 * samples.length, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  view.setUint32(16, 16, true); // fmt chunk size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, 2 * rate, true); // bytes per second
  view.setUint16(32, 2, true); // bytes per frame
  view.setUint16(34, 16, true); // bits per sample
  ascii(36, "data");
  view.setUint32(40, 2 * samples.length, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(44 + 2 * i, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Blob([view.buffer], { type: "audio/wav" });
}

// ----- asking ---------------------------------------------------------------------------------

async function loadInfo() {
  try {
    info = await call("/info");
    $("auth").hidden = true;
    $("model-info").textContent = captioning()
      ? `caption model (beam size ${info.beam_size}), input: ${info.modalities.join(" + ")}`
      : `${info.task} model, ${info.labels.length} labels, inputs: ${info.modalities.join(" + ")}`;
    if (captioning()) $("ask").textContent = "Caption";
    $("search").hidden = !info.search;
    buildInputs();
    $("ask").disabled = false;
  } catch (error) {
    $("model-info").textContent = "model not available: " + error.message;
    if (!$("auth").hidden) return;
    setTimeout(loadInfo, 2000); // still loading: try again
  }
}

function showCaption(body) {
  $("caption").textContent = body.caption;
  $("caption-meta").textContent = `beam size ${body.beam_size}, ${Math.round(1000 * body.seconds)} ms`;
  $("caption-result").hidden = false;
}

function showPrediction(prediction, images) {
  $("answer").textContent = prediction.prediction;
  const list = $("topk");
  list.replaceChildren();
  for (const { label, score } of prediction.top) {
    const bar = element("span", { class: "bar" });
    bar.style.width = Math.max(1, Math.round(200 * score)) + "px";
    list.append(element("li", {}, element("span", { class: "label" }, label), bar,
      element("span", { class: "prob" }, percent(score))));
  }
  const c = prediction.contribution;
  $("contribution-box").hidden = !c;
  const rows = $("contribution").tBodies[0];
  rows.replaceChildren();
  if (c) {
    const used = Object.keys(c.without);
    rows.append(element("tr", {}, element("th", {}, used.join(" + ")), element("td", { id: "c-all" }, percent(c.score))));
    for (const name of used) {
      rows.append(element("tr", {}, element("th", {}, "without the " + name),
        element("td", { id: "c-no-" + name }, percent(c.without[name]))));
    }
  }
  $("result").hidden = false;
  showExplanation(prediction.explanation, images);
}

// ----- the explanation: a heatmap over each image, each word coloured by its attribution --------

function showExplanation(explanation, images) {
  // images: modality -> URL of the file that was asked about (only those can carry a heatmap)
  const heatmaps = Object.entries(explanation ? explanation.heatmaps : {}).filter(([name]) => images[name]);
  const words = Object.entries(explanation ? explanation.words : {});
  $("heatmaps").replaceChildren(...heatmaps.map(([name, grid]) => heatmapFigure(name, grid, images[name])));
  $("words").replaceChildren(...words.map(([name, list]) => wordLine(name, list)));
  $("explanation").hidden = !(heatmaps.length || words.length);
}

function heatmapFigure(name, grid, src) {
  const image = element("img", { id: "heat-image-" + name, src, alt: `the ${name} that was asked about` });
  const canvas = element("canvas", { id: "heatmap-" + name, class: "heatmap", role: "img",
    "aria-label": `heatmap over the ${name}: the redder a region, the more the answer rested on it` });
  image.addEventListener("load", () => drawHeatmap(canvas, image, grid), { once: true });
  return element("figure", { class: "heat" }, element("div", { class: "heat-stack" }, image, canvas),
    element("figcaption", { class: "muted" }, `Where the answer looked in the ${name} (red: most)`));
}

function drawHeatmap(canvas, image, grid) {
  // The grid (rows of values in [0, 1]) as a yellow-to-red ramp, transparent where 0, in a canvas
  // one pixel per cell, then drawn smoothly upscaled over the image at its displayed size.
  const rows = grid.length, cols = rows ? grid[0].length : 0;
  if (!cols) return;
  const cells = new ImageData(cols, rows);
  grid.forEach((line, y) => line.forEach((v, x) => {
    cells.data.set([255, Math.round(220 * (1 - v)), 0, Math.round(190 * v)], 4 * (y * cols + x));
  }));
  const small = element("canvas", { width: cols, height: rows });
  small.getContext("2d").putImageData(cells, 0, 0);
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(image.clientWidth * ratio);
  canvas.height = Math.round(image.clientHeight * ratio);
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.drawImage(small, 0, 0, canvas.width, canvas.height);
}

function wordLine(name, list) {
  // Green for the answer, red against it, the stronger the larger the attribution (relative to the
  // line's largest); also told apart without colour (solid vs dotted underline) and by the title.
  const largest = Math.max(1e-12, ...list.map(({ attribution }) => Math.abs(attribution)));
  const spans = list.map(({ word, attribution }) => {
    const strength = (0.08 + 0.62 * Math.abs(attribution) / largest).toFixed(3);
    const span = element("span", { class: "word " + (attribution >= 0 ? "for" : "against"),
      title: `${attribution >= 0 ? "+" : ""}${attribution.toFixed(4)}` }, word);
    span.dataset.attribution = attribution;
    span.style.backgroundColor = attribution >= 0 ? `rgba(0, 150, 60, ${strength})` : `rgba(210, 30, 30, ${strength})`;
    return span;
  });
  const words = element("p", { id: "words-" + name, class: "words" });
  spans.forEach((span, i) => words.append(...(i ? [" ", span] : [span])));
  return element("div", { class: "word-line" }, element("h4", {}, `The ${name}'s words`), words,
    element("p", { class: "muted help" }, "green, solid underline: for the answer; red, dotted: against it "
      + "(hover a word for its attribution)"));
}

async function ask(event) {
  event.preventDefault();
  showError(null);
  if (!info) return;
  if (recording.active) return showError("stop the recording first");
  const form = new FormData();
  for (const name of info.modalities) {
    if (info.inputs[name].kind === "file") {
      const file = $(name).files[0];
      if (file) form.append(name, file);
    } else {
      const text = $(name).value.trim();
      if (text) form.append(name, text);
    }
  }
  if (![...form.keys()].length) return showError("give at least one input: " + info.modalities.join(", "));
  const images = {}; // the files asked about, shown again under the answer with their heatmaps
  for (const name of form.keys()) {
    const preview = $("preview-" + name);
    if (preview && preview.tagName === "IMG") images[name] = preview.src;
  }
  if (!captioning()) {
    form.append("top_k", "5");
    form.append("explain", "true");
  }
  $("ask").disabled = true;
  $("result").hidden = $("caption-result").hidden = true; // no answer to other inputs on show meanwhile
  try {
    if (captioning()) {
      showCaption(await call("/caption", { method: "POST", body: form }));
    } else {
      const body = await call("/predict/upload", { method: "POST", body: form });
      showPrediction(body.predictions[0], images);
    }
  } catch (error) {
    showError(error);
  } finally {
    $("ask").disabled = false;
  }
}

async function search(event) {
  event.preventDefault();
  showError(null);
  const text = $("search-text").value.trim();
  if (!text) return;
  try {
    const body = await call("/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text, k: 12 }),
    });
    const gallery = $("gallery");
    gallery.replaceChildren();
    for (const hit of body.hits) {
      const figure = element("figure");
      if (hit.image_url) figure.append(element("img", { src: hit.image_url, alt: "hit " + hit.id }));
      const words = Object.entries(hit.metadata).filter(([k]) => k !== "image").map(([, v]) => v).join(" · ");
      figure.append(element("figcaption", {}, `${hit.score.toFixed(3)} ${words}`));
      gallery.append(figure);
    }
  } catch (error) {
    showError(error);
  }
}

$("ask-form").addEventListener("submit", ask);
$("search-form").addEventListener("submit", search);
$("token-save").addEventListener("click", () => {
  token = $("token").value.trim();
  sessionStorage.setItem("mmfuse-token", token);
  loadInfo();
});
loadInfo();
