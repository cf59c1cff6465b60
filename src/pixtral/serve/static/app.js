// Pixtral chat page: talks to this server's /v1/chat/completions with streaming. No network but this origin.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_SIDE = 1024; // Pixtral sees at most 1024 px a side; larger images are shrunk before upload.

// A conversation's history holds finished exchanges only: a user turn enters it together with its answer,
// so a turn that was refused or stopped before its first token never reaches a later request. New chat
// replaces the conversation object; a request still running writes only into the one it started from.
const newConversation = () => ({ history: [] }); // history: [{role, content}], images as data: URLs

const state = {
  chat: newConversation(),
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
    $("model-name").title = state.model || ""; // the full name, when a narrow screen cuts it short
    if (!state.model) setTimeout(loadModel, 3000);
  } catch (e) {
    $("model-name").textContent = r401(e) ? "API key needed (Settings)" : "server unreachable";
  }
}
const r401 = (e) => String(e.message || e).toLowerCase().includes("api key");
$("api-key").addEventListener("change", loadModel);

// ---------------------------------------------------------------------------------- images
// Both readers reject with an Error whose message names the file and says what is wrong with it.
function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(
      `${file.name} could not be read${reader.error ? ` (${reader.error.message})` : ""}.`));
    reader.readAsDataURL(file);
  });
}

function decodeImage(dataUrl, name) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(
      `${name} is not an image this browser can read (corrupt or unsupported format).`));
    img.src = dataUrl;
  });
}

async function shrink(dataUrl, name) {
  const img = await decodeImage(dataUrl, name);
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
      state.pending.push(await shrink(await readAsDataURL(file), file.name));
    } catch (e) {
      showError(e.message);
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
function buildRequest(turns) {
  const messages = [];
  const system = $("system-prompt").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...turns);
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

// Streams one answer into `out`; resolves to what came back, never throws. `pieces` counts the content
// chunks: one token each, or a few when a character spans several, so after a Stop, when no usage figures
// come, it stands for the tokens received.
async function streamAnswer(body, signal, out) {
  const result = { answer: "", pieces: 0, usage: null, finish: null, error: null };
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal,
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
          if (chunk.usage) result.usage = chunk.usage;
          for (const choice of chunk.choices || []) {
            if (choice.delta && choice.delta.content) {
              result.answer += choice.delta.content;
              result.pieces += 1;
              out.textContent = result.answer;
              scrollDown();
            }
            if (choice.finish_reason) result.finish = choice.finish_reason;
          }
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") result.finish = "stopped";
    else result.error = e.message || String(e);
  }
  return result;
}

function metaLine(result, seconds) {
  const parts = [];
  if (result.finish) parts.push(result.finish === "length" ? "stopped at max tokens" : result.finish);
  const tokens = result.usage ? result.usage.completion_tokens : result.pieces;
  if (result.usage) parts.push(`${result.usage.prompt_tokens} prompt + ${tokens} tokens`);
  else if (tokens) parts.push(`${tokens} tokens`);
  if (tokens) parts.push(`${(tokens / seconds).toFixed(1)} tok/s`);
  return parts.join(" · ");
}

// Puts a turn that got no answer back into the composer, ahead of anything typed since.
function restoreDraft(text, images) {
  const typed = $("prompt").value;
  $("prompt").value = typed.trim() ? text + "\n" + typed : text;
  state.pending = images.concat(state.pending);
  renderAttachments();
}

async function send() {
  if (state.controller) return;
  const text = $("prompt").value;
  if (!text.trim() && !state.pending.length) return;
  showError("");
  $("status").textContent = "";
  const images = state.pending.splice(0);
  renderAttachments();
  const content = images.map((url) => ({ type: "image_url", image_url: { url } }));
  if (text.trim()) content.push({ type: "text", text });
  const userTurn = { role: "user", content };
  const chat = state.chat;
  const question = addMessage("user", text, images);
  $("prompt").value = "";

  const reply = addMessage("assistant", "");
  reply.classList.add("streaming");
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  const started = performance.now();
  const result = await streamAnswer(
    buildRequest([...chat.history, userTurn]), controller.signal, reply.querySelector(".text"));
  reply.classList.remove("streaming");
  if (state.controller === controller) {
    state.controller = null;
    setBusy(false);
  }
  if (chat !== state.chat) return; // New chat was pressed: this turn belongs to no conversation on screen
  if (result.error) showError(result.error);
  if (!result.answer) { // refused, failed or stopped before the first token: the turn is taken back whole
    question.remove();
    reply.remove();
    $("empty-hint").hidden = $("messages").querySelector(".msg") !== null;
    restoreDraft(text, images);
    if (!result.error) {
      $("status").textContent = result.finish === "stopped"
        ? "Stopped before the answer began; your message is back in the box."
        : "The model answered with nothing; your message is back in the box.";
    }
    return;
  }
  chat.history.push(userTurn, { role: "assistant", content: result.answer });
  reply.querySelector(".meta").textContent = metaLine(result, (performance.now() - started) / 1000);
}

$("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
});
$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
$("new-chat").addEventListener("click", () => {
  if (state.controller) state.controller.abort();
  state.controller = null;
  setBusy(false);
  state.chat = newConversation();
  $("status").textContent = "";
  state.pending = [];
  renderAttachments();
  showError("");
  $("messages").replaceChildren($("empty-hint"));
  $("empty-hint").hidden = false;
});

loadModel();
