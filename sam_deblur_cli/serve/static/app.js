// sam-deblur's page: upload photos to /api/jobs, poll their stage, compare before and after.
"use strict";

const STAGES = ["queued", "loading model", "masks", "deblur", "write", "previews"];
const $ = (id) => document.getElementById(id);
const photos = [];
let selected = null;
let limits = { maxUpload: Infinity };

function say(text) { $("message").textContent = text || ""; }

async function errorText(response) {
  try { return (await response.json()).detail; } catch { return `${response.status} ${response.statusText}`; }
}

async function watchHealth() {
  try {
    const health = await (await fetch("/api/health")).json();
    limits.maxUpload = health.max_upload_bytes || Infinity;
    const status = $("status");
    status.className = "status " + health.status;
    status.textContent = health.status === "ready" ? `${health.model} ready on ${health.device}`
      : health.status === "error" ? health.error
      : health.status === "degraded" ? `${health.error} Other models answer: ${health.models.join(", ")}.`
      : `loading ${health.model}…`;
    if (health.status === "loading") setTimeout(watchHealth, 1000);
  } catch { setTimeout(watchHealth, 2000); }
}

async function loadModels() {
  const models = await (await fetch("/api/models")).json();
  const select = $("model");
  for (const m of models) {
    const option = new Option(m.name + (m.masks ? "" : " (no masks)"), m.name, m.default, m.default);
    select.add(option);
  }
}

function addPhotos(files) {
  say("");
  for (const file of files) {
    if (file.size > limits.maxUpload) {
      say(`${file.name} is larger than the server's ${(limits.maxUpload / 2 ** 20).toFixed(0)} MB limit.`);
      continue;
    }
    const photo = { file, name: file.name, id: null, state: "uploading", stage: "uploading", error: null };
    photo.item = document.createElement("li");
    photo.item.addEventListener("click", () => select(photo));
    $("list").append(photo.item);
    photos.push(photo);
    render(photo);
    upload(photo);
  }
}

async function upload(photo) {
  const form = new FormData();
  form.append("file", photo.file, photo.file.name);
  form.append("model", $("model").value);
  if ($("format").value) form.append("format", $("format").value);
  const response = await fetch("/api/jobs", { method: "POST", body: form });
  if (!response.ok) return fail(photo, await errorText(response));
  Object.assign(photo, await response.json());
  poll(photo);
}

function fail(photo, text) {
  photo.state = "failed"; photo.error = text; render(photo);
  say(`${photo.name}: ${text}`);
}

async function poll(photo) {
  const response = await fetch(`/api/jobs/${photo.id}`);
  if (!response.ok) return fail(photo, await errorText(response));
  Object.assign(photo, await response.json());
  render(photo);
  if (photo.state === "queued" || photo.state === "running") setTimeout(() => poll(photo), 300);
  else if (photo.state === "done") { if (!selected || selected.state !== "done") select(photo); }
  else if (photo.error) say(`${photo.name}: ${photo.error}`);
}

function render(photo) {
  const item = photo.item;
  item.replaceChildren();
  item.dataset.state = photo.state;
  const name = document.createElement("div");
  name.className = "name"; name.textContent = photo.name;
  const stage = document.createElement("div");
  stage.className = "step";
  const step = Math.max(0, STAGES.indexOf(photo.stage));
  stage.textContent = photo.state === "done" ? "done" : photo.state === "running" ? photo.stage + "…" : photo.state;
  const bar = document.createElement("progress");
  bar.max = STAGES.length; bar.value = photo.state === "done" ? STAGES.length : step;
  item.append(name, stage, bar);
  if (photo.error) {
    const error = document.createElement("div");
    error.className = "error"; error.textContent = photo.error;
    item.append(error);
  }
  item.classList.toggle("selected", photo === selected);
}

function select(photo) {
  if (photo.state !== "done") return;
  selected = photo;
  photos.forEach(render);
  const base = `/api/jobs/${photo.id}`;
  $("viewer").hidden = false;
  $("after").src = `${base}/after`;
  $("overlay").disabled = !photo.outputs.includes("overlay");
  if ($("overlay").disabled) $("overlay").checked = false;
  showBefore();
  $("download").href = `${base}/result`;
  $("download").setAttribute("download", "");
  slide();
}

function showBefore() {
  if (!selected) return;
  const which = $("overlay").checked ? "overlay" : "before";
  $("before").src = `/api/jobs/${selected.id}/${which}`;
}

function slide() {
  const percent = Number($("slider").value);
  $("after").style.clipPath = `inset(0 0 0 ${percent}%)`;
  $("divider").style.left = `${percent}%`;
}

function zoom() {
  const value = $("zoom").value;
  const frame = $("frame");
  frame.classList.toggle("fit", value === "fit");
  $("stage").classList.toggle("pixelated", value !== "fit" && Number(value) > 1);
  const image = $("before");
  frame.style.width = value === "fit" ? "" : `${image.naturalWidth * Number(value)}px`;
  image.style.width = value === "fit" ? "" : "100%";
}

function setUp() {
  const drop = $("drop");
  $("files").addEventListener("change", (e) => { addPhotos(e.target.files); e.target.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addPhotos(e.dataTransfer.files); });
  $("slider").addEventListener("input", slide);
  $("overlay").addEventListener("change", showBefore);
  $("zoom").addEventListener("change", zoom);
  $("before").addEventListener("load", zoom);
  $("frame").classList.add("fit");
  window.addEventListener("pagehide", () => {
    for (const p of photos) if (p.id && (p.state === "queued" || p.state === "running")) {
      fetch(`/api/jobs/${p.id}`, { method: "DELETE", keepalive: true });
    }
  });
  watchHealth();
  loadModels();
}

document.addEventListener("DOMContentLoaded", setUp);
