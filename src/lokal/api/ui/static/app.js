// lokal's web UI: chat, models, playground, images (talk.js: the Talk view). Only lokal's public HTTP API is used.
import { ApiError, auth, call, getJSON, postJSON, stream } from "./api.js";
import { $, make, say } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { fillTalk } from "./talk.js";

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
}

function message(exc) {
  return exc instanceof ApiError ? exc.message : String(exc?.message ?? exc);
}

// ---------------------------------------------------------------- the API key

const keyDialog = $("key-dialog");
let keyWaiters = [];

function askForKey(text) {
  $("key-message").textContent = text;
  $("key-message").classList.toggle("error", Boolean(auth.key));
  $("key-button").hidden = false;
  if (!keyDialog.open) {
    $("key-input").value = "";
    keyDialog.showModal();
    $("key-input").focus();
  }
  return new Promise((resolve) => keyWaiters.push(resolve));
}

auth.onUnauthorized = (error) => {
  const refused = auth.key
    ? `The server refused this API key: ${error.message} Enter a valid key.`
    : "This server needs an API key. Enter it to continue.";
  askForKey(refused).then(() => refresh());
};

$("key-form").addEventListener("submit", () => {
  auth.key = $("key-input").value.trim();
  const waiters = keyWaiters;
  keyWaiters = [];
  waiters.forEach((resolve) => resolve());
});
$("key-forget").addEventListener("click", () => {
  auth.key = "";
  $("key-input").value = "";
  $("key-message").textContent = "The key was removed from this browser.";
  $("key-message").classList.remove("error");
});
$("key-button").addEventListener("click", () => askForKey(auth.key ? "Change or forget the API key kept in this browser." : "Enter the API key."));

// ---------------------------------------------------------------- models (shared)

let models = [];

async function loadModels() {
  try {
    models = (await getJSON("/lokal/models")).data;
    $("banner").hidden = true;
  } catch (exc) {
    if (exc.status === 401) return models;
    $("banner").textContent = `Could not list the models: ${message(exc)}`;
    $("banner").hidden = false;
  }
  fillPickers();
  return models;
}

function fillSelect(select, task) {
  const previous = select.value || select.dataset.want || "";
  const usable = models.filter((m) => m.state !== "broken" && m.tasks.includes(task));
  select.replaceChildren(...usable.map((m) => make("option", { value: m.name, text: m.name })));
  if (!usable.length) select.append(make("option", { value: "", text: `no model serves ${task}` }));
  if (usable.some((m) => m.name === previous)) select.value = previous;
}

function fillVoices() {
  const select = $("tts-voice");
  const previous = select.value;
  const model = models.find((m) => m.name === $("tts-model").value);
  const voices = model?.voices ?? [];
  select.replaceChildren(...voices.map((v) => make("option", { value: v, text: v })));
  if (voices.includes(previous)) select.value = previous;
}

function fillPickers() {
  fillSelect($("chat-model"), "chat");
  fillSelect($("embed-model"), "embed");
  fillSelect($("rerank-model"), "rerank");
  fillSelect($("stt-model"), "transcribe");
  fillSelect($("tts-model"), "speak");
  fillVoices();
  fillSelect($("img-model"), "image");
  fillTalk(models);
  const chat = current();
  if (chat && chat.model && [...$("chat-model").options].some((o) => o.value === chat.model)) $("chat-model").value = chat.model;
  renderModels();
}

// ---------------------------------------------------------------- chat

const CHATS = "lokal.chats";
const CURRENT = "lokal.currentChat";
let chats = [];
let controller = null;

function loadChats() {
  try {
    chats = JSON.parse(localStorage.getItem(CHATS) || "[]");
    if (!Array.isArray(chats)) chats = [];
  } catch {
    chats = [];
  }
  if (!chats.length) chats.push(newChat());
  if (!chats.some((c) => c.id === localStorage.getItem(CURRENT))) localStorage.setItem(CURRENT, chats[0].id);
}

function saveChats() {
  localStorage.setItem(CHATS, JSON.stringify(chats));
}

function newChat() {
  return { id: crypto.randomUUID(), title: "New chat", messages: [], updated: Date.now(),
           model: $("chat-model").value || "", system: "", temperature: 0.7, max_tokens: 512 };
}

function current() {
  return chats.find((c) => c.id === localStorage.getItem(CURRENT)) ?? chats[0];
}

function renderChatList() {
  const id = current().id;
  $("chat-list").replaceChildren(...chats.map((chat) => make("li", { class: chat.id === id ? "active" : "" },
    make("button", { type: "button", class: "chat-open", text: chat.title, "aria-current": chat.id === id ? "true" : null,
                     onclick: () => selectChat(chat.id) }),
    make("button", { type: "button", class: "chat-delete ghost", text: "×", "aria-label": `Delete chat “${chat.title}”`,
                     title: "Delete chat", onclick: () => deleteChat(chat.id) }))));
}

function selectChat(id) {
  if (controller) return;
  localStorage.setItem(CURRENT, id);
  showChat();
}

function deleteChat(id) {
  if (controller && current().id === id) return;
  chats = chats.filter((c) => c.id !== id);
  if (!chats.length) chats.push(newChat());
  if (!chats.some((c) => c.id === localStorage.getItem(CURRENT))) localStorage.setItem(CURRENT, chats[0].id);
  saveChats();
  showChat();
}

function showChat() {
  const chat = current();
  if (chat.model && [...$("chat-model").options].some((o) => o.value === chat.model)) $("chat-model").value = chat.model;
  $("chat-system").value = chat.system ?? "";
  $("chat-temperature").value = chat.temperature ?? 0.7;
  $("chat-max-tokens").value = chat.max_tokens ?? 512;
  $("chat-model-line").textContent = $("chat-model").value ? `Model: ${$("chat-model").value}` : "";
  renderChatList();
  $("chat-log").replaceChildren(...chat.messages.map(messageNode));
  say("chat-status", "");
  scrollLog();
}

function messageNode(msg) {
  const body = make("div", { class: "body" });
  if (msg.role === "assistant") renderMarkdown(msg.content, body);
  else body.textContent = msg.content;
  const node = make("article", { class: `msg ${msg.role}`, "aria-label": msg.role === "user" ? "You" : "Assistant" },
    make("div", { class: "who", text: msg.role === "user" ? "You" : "Assistant" }), body);
  if (msg.stats) node.append(make("div", { class: "stats muted small", text: msg.stats }));
  if (msg.error) node.append(make("div", { class: "error small", role: "alert", text: msg.error }));
  if (msg.role === "assistant" && msg.content && models.some((m) => m.state !== "broken" && m.tasks.includes("speak"))) {
    const status = make("span", { class: "muted small", role: "status" });
    const button = make("button", { type: "button", class: "ghost small read-aloud", text: "Read aloud",
      onclick: () => readAloud(msg.content, button, status) });
    node.append(make("div", { class: "row" }, button, status));
  }
  return node;
}

function scrollLog() {
  const log = $("chat-log");
  log.scrollTop = log.scrollHeight;
}

function rememberSettings() {
  const chat = current();
  chat.model = $("chat-model").value;
  chat.system = $("chat-system").value;
  chat.temperature = Number($("chat-temperature").value);
  chat.max_tokens = Number($("chat-max-tokens").value);
  saveChats();
  $("chat-model-line").textContent = chat.model ? `Model: ${chat.model}` : "";
}

for (const id of ["chat-model", "chat-system", "chat-temperature", "chat-max-tokens"]) $(id).addEventListener("change", rememberSettings);

function streaming(on) {
  $("chat-send").hidden = on;
  $("chat-stop").hidden = !on;
  $("chat-log").setAttribute("aria-busy", on ? "true" : "false");
  if (on) $("chat-stop").focus();
  else $("chat-input").focus();
}

async function send(text) {
  const chat = current();
  rememberSettings();
  if (!chat.model) {
    say("chat-status", "No chat model is available: install or configure one on the Models page.", true);
    return;
  }
  chat.messages.push({ role: "user", content: text });
  if (chat.title === "New chat") chat.title = text.slice(0, 40);
  const reply = { role: "assistant", content: "" };
  chat.messages.push(reply);
  chat.updated = Date.now();
  saveChats();
  renderChatList();
  const log = $("chat-log");
  log.append(messageNode(chat.messages.at(-2)));
  const node = messageNode(reply);
  log.append(node);
  const body = node.querySelector(".body");
  scrollLog();

  const messages = [];
  if (chat.system.trim()) messages.push({ role: "system", content: chat.system });
  for (const m of chat.messages.slice(0, -1)) if (!m.error || m.content) messages.push({ role: m.role, content: m.content });
  const request = { model: chat.model, messages, stream: true, stream_options: { include_usage: true },
                    temperature: chat.temperature, max_tokens: chat.max_tokens };
  controller = new AbortController();
  streaming(true);
  say("chat-status", "Generating…");
  const started = performance.now();
  let first = null;
  let usage = null;
  let pending = false;
  const paint = () => {
    pending = false;
    renderMarkdown(reply.content, body);
    scrollLog();
  };
  try {
    await stream("/v1/chat/completions", request, {
      signal: controller.signal,
      onEvent: (event) => {
        if (event.error) throw new ApiError(event.error.code ?? 500, event.error.message ?? "The generation failed.");
        if (event.usage) usage = event.usage;
        const delta = event.choices?.[0]?.delta;
        if (delta?.content) {
          first ??= performance.now();
          reply.content += delta.content;
          if (!pending) {
            pending = true;
            requestAnimationFrame(paint);
          }
        }
      },
    });
    const end = performance.now();
    const tokens = usage?.completion_tokens ?? 0;
    const seconds = first ? (end - first) / 1000 : 0;
    const speed = tokens > 1 && seconds > 0 ? `${((tokens - 1) / seconds).toFixed(1)} tokens/s` : "";
    reply.stats = [`${tokens} tokens`, speed, first ? `first token after ${((first - started) / 1000).toFixed(2)} s` : ""]
      .filter(Boolean).join(" · ");
    say("chat-status", "");
  } catch (exc) {
    if (exc.name === "AbortError") {
      reply.stats = "Stopped.";
      say("chat-status", "Stopped: the server was told to stop generating.");
    } else {
      reply.error = message(exc);
      say("chat-status", "");
    }
  } finally {
    controller = null;
    chat.updated = Date.now();
    saveChats();
    node.replaceWith(messageNode(reply));
    streaming(false);
    scrollLog();
  }
}

$("chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text || controller) return;
  $("chat-input").value = "";
  send(text);
});
$("chat-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("chat-form").requestSubmit();
  }
});
$("chat-stop").addEventListener("click", () => controller?.abort());
$("chat-new").addEventListener("click", () => {
  if (controller) return;
  const chat = newChat();
  const previous = current();
  Object.assign(chat, { model: previous.model, system: previous.system, temperature: previous.temperature, max_tokens: previous.max_tokens });
  chats.unshift(chat);
  localStorage.setItem(CURRENT, chat.id);
  saveChats();
  showChat();
  $("chat-input").focus();
});

// ---------------------------------------------------------------- models page

const busy = new Set(); // models with a load/unload/remove under way

function stateCell(m) {
  const state = busy.has(m.name) ? "working" : m.state;
  const cell = make("td", {}, make("span", { class: `badge ${state}`, text: state }));
  if (m.error) cell.append(make("div", { class: "error small", text: m.error }));
  if (m.pending_downloads?.length) cell.append(make("div", { class: "muted small", text: `to download: ${m.pending_downloads.join(", ")}` }));
  return cell;
}

function renderModels() {
  const rows = models.map((m) => make("tr", { "data-model": m.name },
    make("th", { scope: "row", text: m.name }),
    stateCell(m),
    make("td", { "data-label": "Tasks", text: m.tasks.join(", ") }),
    make("td", { class: "file", "data-label": "File", text: m.file ?? "" }),
    make("td", { class: "num", "data-label": "Size", text: bytes(m.size_bytes) }),
    make("td", { class: "num", "data-label": "Context", text: m.context_size ? String(m.context_size) : "" }),
    make("td", { class: "actions" },
      m.state === "loaded"
        ? make("button", { type: "button", text: "Unload", "aria-label": `Unload ${m.name}`, disabled: busy.has(m.name), onclick: () => modelAction(m.name, "unload") })
        : make("button", { type: "button", text: "Load", "aria-label": `Load ${m.name}`, disabled: busy.has(m.name) || m.state === "broken", onclick: () => modelAction(m.name, "load") }),
      make("button", { type: "button", class: "danger ghost", text: "Remove", "aria-label": `Remove ${m.name}`, disabled: busy.has(m.name), onclick: () => removeModel(m.name) }))));
  if (!rows.length) rows.push(make("tr", {}, make("td", { colspan: 7, class: "muted", text: "No models are configured yet: install one from the gallery below." })));
  $("models-body").replaceChildren(...rows);
}

async function modelAction(name, action) {
  busy.add(name);
  renderModels();
  say("models-status", `${action === "load" ? "Loading" : "Unloading"} ${name}…`);
  try {
    await postJSON(`/lokal/models/${encodeURIComponent(name)}/${action}`, {});
    say("models-status", `${name} ${action === "load" ? "loaded" : "unloaded"}.`);
  } catch (exc) {
    say("models-status", `${name}: ${message(exc)}`, true);
  } finally {
    busy.delete(name);
    await loadModels();
  }
}

async function removeModel(name) {
  if (!confirm(`Remove ${name}? Its config and the files no other model uses are deleted.`)) return;
  busy.add(name);
  renderModels();
  try {
    const result = await postJSON(`/models/delete/${encodeURIComponent(name)}`, {});
    say("models-status", `${name} removed${result.kept?.length ? ` (kept, used by other models: ${result.kept.join(", ")})` : ""}.`);
  } catch (exc) {
    say("models-status", `${name}: ${message(exc)}`, true);
  } finally {
    busy.delete(name);
    await loadModels();
    loadGallery(false);
  }
}

$("models-refresh").addEventListener("click", () => {
  loadModels();
  loadGallery(true);
});

// The gallery and install jobs.
let gallery = null;

async function loadGallery(force) {
  if (gallery && !force) return renderGallery();
  say("gallery-status", "Reading the galleries…");
  try {
    gallery = await getJSON("/models/available");
    say("gallery-status", "");
  } catch (exc) {
    if (exc.status === 401) return;
    say("gallery-status", `The gallery is not available: ${message(exc)}`, true);
    gallery = null;
  }
  renderGallery();
}

function renderGallery() {
  const query = $("gallery-search").value.trim().toLowerCase();
  const all = gallery ?? [];
  const hits = all.filter((e) => !query || [e.name, e.description ?? "", ...(e.tags ?? [])].join(" ").toLowerCase().includes(query));
  const shown = hits.slice(0, 50);
  $("gallery").replaceChildren(...shown.map((e) => {
    const id = `${e.gallery?.name ?? ""}@${e.name}`;
    return make("li", { class: "entry" },
      make("div", {}, make("strong", { text: e.name }), make("span", { class: "muted small", text: `  ${e.gallery?.name ?? ""}` }),
        e.description ? make("p", { class: "small", text: e.description.slice(0, 240) }) : null),
      e.installed
        ? make("span", { class: "badge loaded", text: "installed" })
        : make("button", { type: "button", text: "Install", "aria-label": `Install ${e.name}`, onclick: () => install(id, e.name) }));
  }));
  if (gallery) say("gallery-status", `${hits.length} of ${all.length} entries${hits.length > shown.length ? ` (first ${shown.length} shown)` : ""}.`);
}

$("gallery-search").addEventListener("input", renderGallery);

async function install(id, name) {
  const item = make("li", { class: "job" }, make("strong", { text: name }));
  const label = make("span", { class: "small", text: " starting…" });
  const bar = make("progress", { max: 100, value: 0, "aria-label": `Install progress of ${name}` });
  const cancel = make("button", { type: "button", class: "ghost danger", text: "Cancel", "aria-label": `Cancel install of ${name}` });
  const status = make("div", { class: "small", role: "status" });
  item.append(label, make("div", { class: "row" }, bar, cancel), status);
  $("jobs").prepend(item);
  let uuid = null;
  cancel.addEventListener("click", async () => {
    if (!uuid) return;
    cancel.disabled = true;
    try {
      await postJSON(`/models/jobs/${uuid}/cancel`, {});
    } catch (exc) {
      status.textContent = message(exc);
    }
  });
  try {
    uuid = (await postJSON("/models/apply", { id })).uuid;
    for (;;) {
      const job = await getJSON(`/models/jobs/${uuid}`);
      const pct = Math.max(0, Math.min(100, Number(job.progress) || 0));
      bar.value = pct;
      label.textContent = ` ${job.file_name || ""} ${job.downloaded_size ? `${job.downloaded_size} of ${job.file_size}` : ""} ${pct.toFixed(0)} %`;
      status.textContent = job.message || "";
      if (job.processed) {
        cancel.remove();
        if (job.error) {
          status.textContent = `Failed: ${job.error}`;
          status.className = "error small";
        } else if (job.cancelled) {
          status.textContent = `Cancelled${job.message ? `: ${job.message}` : "."}`;
        } else {
          bar.value = 100;
          status.textContent = `Installed ${job.name || name}.`;
        }
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, 400));
    }
  } catch (exc) {
    cancel.remove();
    status.textContent = `Failed: ${message(exc)}`;
    status.className = "error small";
  }
  await loadModels();
  loadGallery(true);
}

// ---------------------------------------------------------------- playground

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / (Math.sqrt(na) * Math.sqrt(nb) || 1);
}

const lines = (text) => text.split("\n").map((l) => l.trim()).filter(Boolean);
const short = (text) => (text.length > 28 ? `${text.slice(0, 27)}…` : text);

async function busyForm(form, out, work) {
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  out.replaceChildren(make("p", { class: "muted small", text: "Working…" }));
  try {
    await work();
  } catch (exc) {
    out.replaceChildren(make("p", { class: "error", role: "alert", text: message(exc) }));
  } finally {
    button.disabled = false;
  }
}

$("embed-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const out = $("embed-out");
  busyForm(event.target, out, async () => {
    const texts = lines($("embed-input").value);
    const result = await postJSON("/v1/embeddings", { model: $("embed-model").value, input: texts });
    const vectors = result.data.sort((a, b) => a.index - b.index).map((d) => d.embedding);
    const table = make("table", { class: "matrix" },
      make("caption", { text: "Cosine similarity" }),
      make("thead", {}, make("tr", {}, make("td"), ...texts.map((t, i) => make("th", { scope: "col", title: t, text: `${i + 1}` })))),
      make("tbody", {}, ...vectors.map((v, i) => make("tr", {},
        make("th", { scope: "row", title: texts[i], text: `${i + 1}. ${short(texts[i])}` }),
        ...vectors.map((w) => {
          const s = cosine(v, w);
          const cell = make("td", { class: "num", text: s.toFixed(3) });
          cell.style.setProperty("--s", Math.max(0, s).toFixed(3));
          return cell;
        })))));
    out.replaceChildren(make("p", { class: "result", text: `${vectors.length} vectors × ${vectors[0]?.length ?? 0} dimensions` }), table);
  });
});

$("rerank-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const out = $("rerank-out");
  busyForm(event.target, out, async () => {
    const documents = lines($("rerank-docs").value);
    const result = await postJSON("/v1/rerank", { model: $("rerank-model").value, query: $("rerank-query").value, documents });
    out.replaceChildren(make("ol", { class: "ranked" }, ...result.results.map((r) =>
      make("li", {}, make("span", { class: "score", text: r.relevance_score.toFixed(3) }), make("span", { text: ` ${documents[r.index]}` })))));
  });
});

let recorded = null;
let recorder = null;

$("stt-record").addEventListener("click", async () => {
  const button = $("stt-record");
  if (recorder) {
    recorder.stop();
    return;
  }
  if (!navigator.mediaDevices?.getUserMedia || typeof MediaRecorder === "undefined") {
    say("stt-recorded", "Recording is not available in this browser (it needs a secure origin: https or localhost).", true);
    return;
  }
  try {
    const media = await navigator.mediaDevices.getUserMedia({ audio: true });
    const parts = [];
    recorder = new MediaRecorder(media);
    recorder.ondataavailable = (e) => parts.push(e.data);
    recorder.onstop = () => {
      media.getTracks().forEach((t) => t.stop());
      recorded = new File(parts, "recording.webm", { type: recorder.mimeType || "audio/webm" });
      recorder = null;
      button.textContent = "Record";
      say("stt-recorded", `Recorded ${bytes(recorded.size)}; it is sent instead of a file.`);
    };
    recorder.start();
    button.textContent = "Stop recording";
    say("stt-recorded", "Recording…");
  } catch (exc) {
    say("stt-recorded", `Cannot record: ${message(exc)}`, true);
  }
});
$("stt-file").addEventListener("change", () => {
  recorded = null;
  say("stt-recorded", "");
});

$("stt-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const out = $("stt-out");
  busyForm(event.target, out, async () => {
    const file = recorded ?? $("stt-file").files[0];
    if (!file) throw new Error("Choose an audio file or record one first.");
    const form = new FormData();
    form.append("model", $("stt-model").value);
    form.append("file", file, file.name);
    const result = await (await call("/v1/audio/transcriptions", { method: "POST", body: form })).json();
    out.replaceChildren(make("p", { class: "result transcript", text: result.text }));
  });
});

// Speech: the playground's speak box, and chat answers read aloud with its model and voice.

let speaking = null; // the <audio> playing now, and its blob URL

function stopSpeaking() {
  if (!speaking) return;
  speaking.audio.pause();
  URL.revokeObjectURL(speaking.url);
  speaking = null;
}

async function speech(text, format) {
  const model = $("tts-model").value;
  if (!model) throw new Error("No text-to-speech model is available: install one (a Piper voice) on the Models page.");
  const response = await call("/v1/audio/speech", { method: "POST", json: {
    model, input: text, voice: $("tts-voice").value || undefined, response_format: format } });
  return response.blob();
}

function player(blob) {
  stopSpeaking();
  const url = URL.createObjectURL(blob);
  const audio = make("audio", { controls: true, src: url, class: "player" });
  speaking = { audio, url };
  return audio;
}

$("tts-model").addEventListener("change", fillVoices);
$("tts-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const out = $("tts-out");
  busyForm(event.target, out, async () => {
    const blob = await speech($("tts-input").value, $("tts-format").value);
    const audio = player(blob);
    out.replaceChildren(audio, make("p", { class: "muted small", text: `${bytes(blob.size)} of ${$("tts-format").value}` }));
    audio.play().catch(() => {}); // a browser may refuse to play before the page was used; the controls remain
  });
});

async function readAloud(text, button, status) {
  button.disabled = true;
  status.textContent = "Speaking…";
  status.classList.remove("error");
  try {
    const audio = player(await speech(text.slice(0, 4096), "mp3"));
    audio.hidden = true;
    button.after(audio);
    audio.addEventListener("ended", () => { status.textContent = ""; });
    await audio.play().catch(() => { audio.hidden = false; });
    status.textContent = "";
  } catch (exc) {
    status.textContent = message(exc);
    status.classList.add("error");
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- images

let imageController = null;

function imageRunning(on) {
  $("img-generate").hidden = on;
  $("img-stop").hidden = !on;
  $("img-results").setAttribute("aria-busy", on ? "true" : "false");
}

function imageCard(index, seed) {
  const img = make("img", { alt: `Image ${index + 1}${seed === null ? "" : ` (seed ${seed + index})`}` });
  const link = make("a", { class: "small", text: "Download", hidden: true });
  const caption = make("span", { class: "muted small", text: "waiting…" });
  const item = make("li", { class: "preview", "data-index": String(index) }, img, caption, link);
  return { item, img, link, caption };
}

$("img-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (imageController) return;
  const model = $("img-model").value;
  if (!model) {
    say("img-status", "No image model is available: install or configure one on the Models page.", true);
    return;
  }
  const n = Number($("img-n").value) || 1;
  const seedText = $("img-seed").value.trim();
  const seed = seedText === "" ? null : Number(seedText);
  const request = { model, prompt: $("img-prompt").value, n, size: `${$("img-width").value}x${$("img-height").value}`,
                    step: Number($("img-steps").value), stream: true, partial_images: 1, response_format: "b64_json" };
  const negative = $("img-negative").value.trim();
  if (negative) request.negative_prompt = negative;
  if (seed !== null) request.seed = seed;
  const cards = Array.from({ length: n }, (_, i) => imageCard(i, seed));
  $("img-results").prepend(...cards.map((c) => c.item));
  const bar = $("img-progress");
  bar.value = 0;
  bar.max = 1;
  imageController = new AbortController();
  imageRunning(true);
  say("img-status", "Waiting for the model…");
  const started = performance.now();
  let made = 0;
  try {
    await stream("/v1/images/generations", request, {
      signal: imageController.signal,
      onEvent: (e) => {
        if (e.error) throw new ApiError(e.error.code ?? 500, e.error.message ?? "The generation failed.");
        const card = cards[e.image_index ?? 0];
        if (e.type === "image_generation.progress") {
          bar.max = n * e.steps;
          bar.value = e.image_index * e.steps + e.step;
          card.caption.textContent = `step ${e.step} of ${e.steps}`;
          say("img-status", `Image ${e.image_index + 1} of ${n}: step ${e.step} of ${e.steps}`);
        } else if (e.type === "image_generation.partial_image") {
          card.img.src = `data:image/${e.output_format};base64,${e.b64_json}`;
        } else if (e.type === "image_generation.completed") {
          const url = `data:image/${e.output_format};base64,${e.b64_json}`;
          card.img.src = url;
          card.item.classList.remove("preview");
          card.caption.textContent = `${e.size}${seed === null ? "" : ` · seed ${seed + e.image_index}`}`;
          card.link.href = url;
          card.link.download = `lokal-${Date.now()}-${e.image_index + 1}.${e.output_format === "jpeg" ? "jpg" : e.output_format}`;
          card.link.hidden = false;
          card.link.setAttribute("aria-label", `Download image ${e.image_index + 1}`);
          made++;
        }
      },
    });
    bar.value = bar.max;
    say("img-status", `${made} image${made === 1 ? "" : "s"} in ${((performance.now() - started) / 1000).toFixed(1)} s.`);
  } catch (exc) {
    if (exc.name === "AbortError") say("img-status", "Stopped: the server was told to stop generating.");
    else say("img-status", message(exc), true);
  } finally {
    for (const card of cards) if (!card.link.href) card.item.remove();
    imageController = null;
    imageRunning(false);
  }
});
$("img-stop").addEventListener("click", () => imageController?.abort());

// ---------------------------------------------------------------- pages

const PAGES = ["chat", "models", "playground", "images", "talk"];

function route() {
  const page = PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : "chat";
  for (const name of PAGES) $(`page-${name}`).hidden = name !== page;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `lokal · ${page[0].toUpperCase()}${page.slice(1)}`;
  if (page === "models") {
    loadModels();
    loadGallery(false);
  }
}

async function refresh() {
  await loadModels();
  if (location.hash === "#models") loadGallery(true);
}

window.addEventListener("hashchange", route);
loadChats();
showChat();
route();
if (auth.key) $("key-button").hidden = false;
await loadModels();
showChat();
document.body.dataset.ready = "true";
