// The mmfuse page: ask the model about an image + text, show top-k and modality contributions,
// and search the index when the server has one. Plain DOM, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("mmfuse-token") || "";

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

async function loadInfo() {
  try {
    const info = await call("/info");
    $("auth").hidden = true;
    $("model-info").textContent = `${info.task} model, ${info.labels.length} labels, inputs: ${info.modalities.join(" + ")}`;
    $("search").hidden = !info.search;
  } catch (error) {
    $("model-info").textContent = "model not available: " + error.message;
    if (!$("auth").hidden) return;
    setTimeout(loadInfo, 2000); // still loading: try again
  }
}

function setImage(file) {
  if (!file) return;
  const transfer = new DataTransfer();
  transfer.items.add(file);
  $("image").files = transfer.files;
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("drop-hint").textContent = file.name;
}

function showPrediction(prediction) {
  $("answer").textContent = prediction.prediction;
  const list = $("topk");
  list.replaceChildren();
  for (const { label, score } of prediction.top) {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = Math.max(1, Math.round(200 * score)) + "px";
    const value = document.createElement("span");
    value.className = "prob";
    value.textContent = percent(score);
    item.append(name, bar, value);
    list.append(item);
  }
  const c = prediction.contribution;
  $("contribution").hidden = !c;
  if (c) {
    $("c-both").textContent = percent(c.both);
    $("c-no-image").textContent = percent(c.without_image);
    $("c-no-text").textContent = percent(c.without_text);
  }
  $("result").hidden = false;
}

async function ask(event) {
  event.preventDefault();
  showError(null);
  const form = new FormData();
  const file = $("image").files[0];
  const text = $("text").value.trim();
  if (file) form.append("image", file);
  if (text) form.append("text", text);
  if (!file && !text) return showError("give an image, a text, or both");
  form.append("top_k", "5");
  form.append("explain", "true");
  $("ask").disabled = true;
  try {
    const body = await call("/predict/upload", { method: "POST", body: form });
    showPrediction(body.predictions[0]);
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
      const figure = document.createElement("figure");
      if (hit.image_url) {
        const img = document.createElement("img");
        img.src = hit.image_url;
        img.alt = "hit " + hit.id;
        figure.append(img);
      }
      const caption = document.createElement("figcaption");
      const words = Object.entries(hit.metadata).filter(([k]) => k !== "image").map(([, v]) => v).join(" · ");
      caption.textContent = `${hit.score.toFixed(3)} ${words}`;
      figure.append(caption);
      gallery.append(figure);
    }
  } catch (error) {
    showError(error);
  }
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); setImage(e.dataTransfer.files[0]); });
$("image").addEventListener("change", () => {
  const file = $("image").files[0];
  if (file) { $("preview").src = URL.createObjectURL(file); $("preview").hidden = false; $("drop-hint").textContent = file.name; }
});
$("ask-form").addEventListener("submit", ask);
$("search-form").addEventListener("submit", search);
$("token-save").addEventListener("click", () => {
  token = $("token").value.trim();
  sessionStorage.setItem("mmfuse-token", token);
  loadInfo();
});
loadInfo();
