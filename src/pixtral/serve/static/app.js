// Pixtral chat page: talks to this server's /v1/chat/completions with streaming. No network but this origin.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_SIDE = 1024; // Pixtral sees at most 1024 px a side; larger images are shrunk before upload.

const state = {
  history: [],       // [{role, content}] in OpenAI shape, images as data: URLs
  pending: [],       // data: URLs attached to the next message
  controller: null,  // AbortController of the running request
  model: null,
};

// ---------------------------------------------------------------------------------- settings
const SETTINGS = ["api-key", "system-prompt", "temperature", "top-p", "top-k", "max-tokens", "seed"];
for (const id of SETTINGS) {
  const saved = localStorage.getItem("pixtral." + id);
  if (saved !== null) $(id).value = saved;
  $(id).addEventListener("change", () => localStorage.setItem("pixtral." + id, $(id).value));
}
$("toggle-settings").addEventListener("click", () => {
  const panel = $("settings");
  panel.hidden = !panel.hidden;
  $("toggle-settings").setAttribute("aria-expanded", String(!panel.hidden));
});

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function numberSetting(id, parse) {
  const raw = $(id).value.trim();
  if (raw === "") return undefined;
  const v = parse(raw);
  return Number.isFinite(v) ? v : undefined;
}

// ---------------------------------------------------------------------------------- model name
async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    state.model = body.data.length ? body.data[0].id : null;
    $("model-name").textContent = state.model ? state.model : "model loading…";
    if (!state.model) setTimeout(loadModel, 3000);
  } catch (e) {
    $("model-name").textContent = r401(e) ? "API key needed (Settings)" : "server unreachable";
  }
}
const r401 = (e) => String(e.message || e).toLowerCase().includes("api key");
$("api-key").addEventListener("change", loadModel);

// ---------------------------------------------------------------------------------- images
function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function shrink(dataUrl) {
  const img = new Image();
  await new Promise((resolve, reject) => { img.onload = resolve; img.onerror = reject; img.src = dataUrl; });
  const side = Math.max(img.naturalWidth, img.naturalHeight);
  if (side <= MAX_SIDE) return dataUrl;
  const scale = MAX_SIDE / side;
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(img.naturalWidth * scale));
  canvas.height = Math.max(1, Math.round(img.naturalHeight * scale));
  canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
  return canvas.toDataURL("image/png");
}

async function attachFiles(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) { showError(`${file.name} is not an image.`); continue; }
    try {
      state.pending.push(await shrink(await readAsDataURL(file)));
    } catch (e) {
      showError(`Cannot read ${file.name}: ${e && e.message ? e.message : e}`);
    }
  }
  renderAttachments();
}

function renderAttachments() {
  const box = $("attachments");
  box.replaceChildren();
  state.pending.forEach((url, i) => {
    const wrap = document.createElement("div");
    wrap.className = "thumb";
    const img = document.createElement("img");
    img.src = url;
    img.alt = `attached image ${i + 1}`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "Remove";
    remove.addEventListener("click", () => { state.pending.splice(i, 1); renderAttachments(); });
    wrap.append(img, remove);
    box.append(wrap);
  });
}

$("file-input").addEventListener("change", async (e) => {
  await attachFiles(Array.from(e.target.files));
  e.target.value = "";
});

let dragDepth = 0;
window.addEventListener("dragenter", (e) => { e.preventDefault(); dragDepth++; $("drop-overlay").hidden = false; });
window.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; $("drop-overlay").hidden = true; } });
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", async (e) => {
  e.preventDefault();
  dragDepth = 0;
  $("drop-overlay").hidden = true;
  if (e.dataTransfer && e.dataTransfer.files.length) await attachFiles(Array.from(e.dataTransfer.files));
});
$("prompt").addEventListener("paste", async (e) => {
  const files = Array.from(e.clipboardData ? e.clipboardData.files : []).filter((f) => f.type.startsWith("image/"));
  if (files.length) { e.preventDefault(); await attachFiles(files); }
});

// ---------------------------------------------------------------------------------- rendering
function addMessage(role, text, images) {
  $("empty-hint").hidden = true;
  const div = document.createElement("div");
  div.className = "msg " + role;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role;
  div.append(label);
  if (images && images.length) {
    const row = document.createElement("div");
    row.className = "images";
    for (const url of images) {
      const img = document.createElement("img");
      img.src = url;
      img.alt = "image";
      row.append(img);
    }
    div.append(row);
  }
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text; // never innerHTML: model output is untrusted
  div.append(body);
  const meta = document.createElement("div");
  meta.className = "meta";
  div.append(meta);
  $("messages").append(div);
  scrollDown();
  return div;
}

function scrollDown() { const m = $("messages"); m.scrollTop = m.scrollHeight; }

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

// ---------------------------------------------------------------------------------- chat
function buildRequest() {
  const messages = [];
  const system = $("system-prompt").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...state.history);
  const body = {
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: numberSetting("temperature", parseFloat),
    top_p: numberSetting("top-p", parseFloat),
    top_k: numberSetting("top-k", (v) => parseInt(v, 10)),
    max_tokens: numberSetting("max-tokens", (v) => parseInt(v, 10)),
    seed: numberSetting("seed", (v) => parseInt(v, 10)),
  };
  if (state.model) body.model = state.model;
  return body;
}

async function send() {
  if (state.controller) return;
  const text = $("prompt").value;
  if (!text.trim() && !state.pending.length) return;
  showError("");
  const images = state.pending.splice(0);
  renderAttachments();
  const content = images.map((url) => ({ type: "image_url", image_url: { url } }));
  if (text.trim()) content.push({ type: "text", text });
  const userTurn = { role: "user", content };
  state.history.push(userTurn);
  addMessage("user", text, images);
  $("prompt").value = "";

  const reply = addMessage("assistant", "");
  reply.classList.add("streaming");
  const out = reply.querySelector(".text");
  const meta = reply.querySelector(".meta");
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  let answer = "", usage = null, finish = null, failed = false;
  const started = performance.now();
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(buildRequest()), signal: controller.signal,
    });
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try { const b = await response.json(); if (b.error) message = b.error.message; } catch (_) { /* keep */ }
      throw new Error(message);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) usage = chunk.usage;
          for (const choice of chunk.choices || []) {
            if (choice.delta && choice.delta.content) {
              answer += choice.delta.content;
              out.textContent = answer;
              scrollDown();
            }
            if (choice.finish_reason) finish = choice.finish_reason;
          }
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") {
      finish = "stopped";
    } else {
      failed = true;
      showError(e.message || String(e));
    }
  } finally {
    reply.classList.remove("streaming");
    state.controller = null;
    setBusy(false);
  }
  if (failed && !answer) {
    reply.remove();
    state.history.pop(); // let the user fix the problem and send again
    $("prompt").value = text;
    state.pending = images;
    renderAttachments();
    return;
  }
  state.history.push({ role: "assistant", content: answer });
  const seconds = (performance.now() - started) / 1000;
  const parts = [];
  if (finish) parts.push(finish === "length" ? "stopped at max tokens" : finish);
  if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} tokens`,
    `${(usage.completion_tokens / seconds).toFixed(1)} tok/s`);
  meta.textContent = parts.join(" · ");
  $("status").textContent = "";
}

$("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
});
$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
$("new-chat").addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  state.history = [];
  state.pending = [];
  renderAttachments();
  showError("");
  $("messages").replaceChildren($("empty-hint"));
  $("empty-hint").hidden = false;
});

loadModel();
