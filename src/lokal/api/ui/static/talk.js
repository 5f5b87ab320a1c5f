// The Talk view: a spoken conversation over OpenAI's Realtime API (GET /v1/realtime, a WebSocket).
// The microphone streams as input_audio_buffer.append; turns end by the server's voice activity
// detection, or by releasing "Hold to talk" (commit + response.create); the answer's transcript
// is shown as it streams and its audio played back gapless. The section's data-* attributes
// (state, played and received samples, playing) say what happened, for people and tests.
import { getJSON, socket } from "./api.js";
import { $, make, say } from "./dom.js";
import { Player, RATE, fromBase64, openMicrophone, pcm16, toBase64 } from "./talk-audio.js";

const SEND = RATE / 10; // samples per input_audio_buffer.append: 100 ms
const MIN_TURN = RATE / 10; // a shorter press-to-talk turn is not committed (the API wants 100 ms)
const SETUP_MS = 20_000; // how long to wait for session.updated
const EARLY = RATE * 10; // samples kept while the session is set up

const view = $("page-talk");
let talk = null; // the open session: { ws, mic, player, ... }

function status(text, isError = false) {
  say("talk-status", text, isError);
}

function setState(state) {
  view.dataset.state = state;
  const open = state !== "idle";
  $("talk-start").hidden = open;
  $("talk-end").hidden = !open;
  $("talk-model").disabled = open;
  $("talk-hold").hidden = !open || mode() !== "ptt";
  showStop();
}

function showStop() {
  // A stopped answer has nothing left to stop, whenever its response.done comes
  $("talk-stop").hidden = !(talk && ((talk.response && !talk.stopped) || talk.player?.playing));
}

function counters() {
  view.dataset.playedSamples = String(talk?.player?.played ?? view.dataset.playedSamples ?? 0);
  view.dataset.receivedSamples = String(talk?.player?.received ?? view.dataset.receivedSamples ?? 0);
  view.dataset.playing = talk?.player?.playing ? "true" : "false";
  showStop();
}

const mode = () => document.querySelector("input[name=talk-mode]:checked").value;

function session() {
  const settings = {
    modalities: ["text", "audio"],
    input_audio_format: "pcm16",
    output_audio_format: "pcm16",
    turn_detection: mode() === "vad"
      ? { type: "server_vad", threshold: 0.5, prefix_padding_ms: 300, silence_duration_ms: 600, create_response: true }
      : null,
  };
  const voice = $("talk-voice").value;
  if (voice) settings.voice = voice;
  else settings.modalities = ["text"]; // no speech model: the answers are shown, not spoken
  const stt = $("talk-stt").value;
  if (stt) settings.input_audio_transcription = { model: stt };
  const instructions = $("talk-instructions").value.trim();
  if (instructions) settings.instructions = instructions;
  return settings;
}

function send(event) {
  if (talk?.ws?.readyState === WebSocket.OPEN) talk.ws.send(JSON.stringify(event));
}

// ------------------------------------------------------------------ the transcript

function item(id, role) {
  const found = talk.items.get(id);
  if (found) return found;
  const body = make("div", { class: "body" });
  const node = make("article", { class: `msg ${role}`, "data-item-id": id, "aria-label": role === "user" ? "You" : "Assistant" },
    make("div", { class: "who", text: role === "user" ? "You" : "Assistant" }), body);
  $("talk-log").append(node);
  node.scrollIntoView({ block: "end" });
  const entry = { node, body, text: "" };
  talk.items.set(id, entry);
  return entry;
}

function write(entry, text, note = "") {
  entry.text = text;
  entry.body.textContent = text + note;
  entry.node.scrollIntoView({ block: "end" });
}

function logError(text) {
  $("talk-log").append(make("p", { class: "error small", role: "alert", text }));
  status(text, true);
}

// ------------------------------------------------------------------ events from the server

function onEvent(e) {
  switch (e.type) {
    case "session.created":
      talk.sessionId = e.session?.id ?? null;
      return;
    case "session.updated":
      if (!talk.ready) ready();
      return;
    case "input_audio_buffer.speech_started":
      silence(); // barge-in: the server cancels the answer, the page stops speaking it
      item(e.item_id, "user").body.textContent = "…";
      status("Hearing you…");
      return;
    case "input_audio_buffer.speech_stopped":
      status("Thinking…");
      return;
    case "input_audio_buffer.committed": {
      const entry = item(e.item_id, "user");
      if (!entry.text) entry.body.textContent = "…";
      return;
    }
    case "conversation.item.input_audio_transcription.delta": {
      const entry = item(e.item_id, "user");
      write(entry, entry.text + (e.delta ?? ""));
      return;
    }
    case "conversation.item.input_audio_transcription.completed":
      write(item(e.item_id, "user"), (e.transcript ?? "").trim());
      return;
    case "conversation.item.input_audio_transcription.failed":
      write(item(e.item_id, "user"), "", `(not transcribed: ${e.error?.message ?? "the transcription failed"})`);
      return;
    case "response.created":
      talk.response = e.response?.id ?? true;
      talk.stopped = false;
      talk.silenced = null;
      status("Answering…");
      showStop();
      return;
    case "response.output_item.added":
      if (e.item?.type === "message") item(e.item.id, "assistant");
      return;
    case "response.audio_transcript.delta":
    case "response.text.delta": {
      const entry = item(e.item_id, "assistant");
      write(entry, entry.text + (e.delta ?? ""));
      return;
    }
    case "response.audio_transcript.done":
      write(item(e.item_id, "assistant"), e.transcript ?? talk.items.get(e.item_id)?.text ?? "");
      return;
    case "response.text.done":
      write(item(e.item_id, "assistant"), e.text ?? talk.items.get(e.item_id)?.text ?? "");
      return;
    case "response.audio.delta":
      if (talk.silenced !== null && (talk.silenced === true || talk.silenced === e.response_id)) return;
      // where this answer item's audio starts among the samples played, for a truncate later
      if (talk.heard?.id !== e.item_id) talk.heard = { id: e.item_id, from: talk.player.received };
      talk.player.play(fromBase64(e.delta));
      counters();
      return;
    case "response.done":
      return responseDone(e.response ?? {});
    case "error":
      logError(`The server: ${e.error?.message ?? "an error"}${e.error?.code ? ` (${e.error.code})` : ""}`);
      return;
    default:
      return; // other events (output items, content parts, rate limits, function calls) change nothing here
  }
}

function responseDone(response) {
  talk.response = null;
  for (const out of response.output ?? []) {
    const entry = talk.items.get(out.id);
    if (entry && response.status === "cancelled") write(entry, entry.text, " (stopped)");
  }
  if (response.status === "failed") {
    const error = response.status_details?.error;
    logError(`The answer failed: ${error?.message ?? error?.code ?? "no reason given"}`);
  } else if (response.status === "cancelled") {
    if (talk.stopped) status("Stopped.");
  } else if (response.status === "incomplete") {
    status(`The answer was cut short (${response.status_details?.reason ?? "incomplete"}).`);
  } else {
    status(mode() === "vad" ? "Listening: speak when you like." : "Hold the button (or Space) while you speak.");
  }
  showStop();
}

// ------------------------------------------------------------------ the microphone

function onSamples(samples) {
  if (!talk?.sending) return;
  if (!talk.ready) { // said while the session is being set up: kept (up to EARLY) and sent once it is
    if (talk.early.length < EARLY) talk.early.push(...samples);
    return;
  }
  let from = 0;
  while (from < samples.length) {
    const take = Math.min(samples.length - from, SEND - talk.pending.length);
    talk.pending.push(...samples.subarray(from, from + take));
    from += take;
    if (talk.pending.length >= SEND) flush();
  }
}

function flush() {
  if (!talk.pending.length) return;
  send({ type: "input_audio_buffer.append", audio: toBase64(pcm16(talk.pending)) });
  talk.turnSamples += talk.pending.length;
  view.dataset.sentSamples = String(Number(view.dataset.sentSamples || 0) + talk.pending.length);
  talk.pending = [];
}

function ready() {
  clearTimeout(talk.setup);
  talk.ready = true;
  const early = talk.early;
  talk.early = [];
  if (talk.sending) onSamples(Float32Array.from(early));
  setState("listening");
  status(mode() === "vad" ? "Listening: speak when you like." : "Hold the button (or Space) while you speak.");
}

// Press to talk: holding starts a turn (and interrupts an answer), releasing ends it.
function holdStart() {
  if (!talk?.ready || mode() !== "ptt" || talk.sending) return;
  stopAnswer();
  send({ type: "input_audio_buffer.clear" });
  talk.pending = [];
  talk.turnSamples = 0;
  talk.sending = true;
  $("talk-hold").setAttribute("aria-pressed", "true");
  status("Recording: release to send.");
}

function holdEnd() {
  if (!talk?.sending || mode() !== "ptt") return;
  flush();
  talk.sending = false;
  $("talk-hold").setAttribute("aria-pressed", "false");
  if (talk.turnSamples < MIN_TURN) {
    send({ type: "input_audio_buffer.clear" });
    status("That was too short: hold the button while you speak.");
    return;
  }
  send({ type: "input_audio_buffer.commit" });
  send({ type: "response.create" });
  status("Thinking…");
}

// ------------------------------------------------------------------ start, stop, hang up

async function start() {
  if (talk) return;
  const model = $("talk-model").value;
  if (!model) {
    status("No chat model is available: install one on the Models page.", true);
    return;
  }
  const player = new Player(counters); // made in the click, so the browser lets it play
  player.resume();
  const current = { ws: null, player, mic: null, ready: false, opened: false, closing: false, sending: mode() === "vad",
                    response: null, stopped: false, silenced: null, early: [], pending: [], turnSamples: 0, items: new Map(),
                    sessionId: null, setup: 0 };
  talk = current;
  view.dataset.playedSamples = view.dataset.receivedSamples = view.dataset.sentSamples = "0";
  setState("connecting");
  status("Opening the microphone…");
  try {
    current.mic = await openMicrophone(onSamples);
    status("Connecting…");
    await getJSON("/v1/models"); // a refused key asks for one here, where HTTP can say so
    if (talk !== current) throw new Error("Ended.");
    current.ws = socket(`/v1/realtime?model=${encodeURIComponent(model)}`);
  } catch (exc) {
    if (talk === current) {
      hangUp();
      status(exc.message, true);
    } else {
      current.mic?.close();
    }
    return;
  }
  const ws = current.ws;
  ws.onopen = () => {
    current.opened = true;
    status("Setting up the session…");
    send({ type: "session.update", session: session() });
    current.setup = setTimeout(() => {
      if (talk === current && !current.ready) {
        hangUp();
        status("The server did not confirm the session (no session.updated).", true);
      }
    }, SETUP_MS);
  };
  ws.onmessage = (message) => {
    if (talk !== current) return;
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      logError("The server sent something that is not JSON.");
      return;
    }
    onEvent(event);
  };
  ws.onclose = (event) => {
    if (talk !== current || current.closing) return;
    const text = current.opened
      ? `The connection closed (${event.code}${event.reason ? `: ${event.reason}` : ""}).`
      : "The server refused the realtime connection (a wrong API key, an unknown model, or no /v1/realtime on this server).";
    hangUp();
    logError(text);
  };
}

// Stop speaking the answer, and drop its audio still on the way (until the next response).
function silence() {
  talk.silenced = talk.response ?? talk.silenced;
  talk.player.stop();
  // The server's history keeps only what was heard of the answer (OpenAI's client does the same)
  const heard = talk.heard;
  if (heard && talk.player.received > talk.player.played) {
    const samples = Math.max(0, talk.player.played - heard.from);
    send({ type: "conversation.item.truncate", item_id: heard.id, content_index: 0,
           audio_end_ms: Math.floor(samples / 24) });
  }
  talk.heard = null;
  counters();
}

// Stop the answer: the server stops generating, the page stops speaking.
function stopAnswer() {
  if (!talk) return;
  if (talk.response) {
    send({ type: "response.cancel" });
    talk.stopped = true;
  }
  silence();
  showStop();
}

function hangUp() {
  if (!talk) return;
  const ending = talk;
  ending.closing = true;
  clearTimeout(ending.setup);
  ending.mic?.close();
  counters();
  ending.player.close();
  if (ending.ws && ending.ws.readyState <= WebSocket.OPEN) ending.ws.close(1000, "hung up");
  talk = null;
  view.dataset.playing = "false";
  $("talk-hold").setAttribute("aria-pressed", "false");
  setState("idle");
  status("Ended.");
}

// ------------------------------------------------------------------ pickers and controls

function options(select, values, fallback) {
  const previous = select.value;
  select.replaceChildren(...values.map(([value, text]) => make("option", { value, text })));
  if (!values.length) select.append(make("option", { value: "", text: fallback }));
  if (values.some(([value]) => value === previous)) select.value = previous;
}

// Fills the pickers from /lokal/models (called by the app whenever the model list is read).
export function fillTalk(models) {
  const usable = (task) => models.filter((m) => m.state !== "broken" && m.tasks.includes(task));
  options($("talk-model"), usable("chat").map((m) => [m.name, m.name]), "no chat model");
  // A session's voice may name a speech model (spoken in its default voice): every server takes that.
  const voices = usable("speak").map((m) => [m.name, m.name]);
  options($("talk-voice"), voices, "no voice: answers in text only");
  options($("talk-stt"), usable("transcribe").map((m) => [m.name, m.name]), "no transcription model");
}

$("talk-form").addEventListener("submit", (event) => {
  event.preventDefault();
  start();
});
$("talk-end").addEventListener("click", hangUp);
$("talk-stop").addEventListener("click", () => {
  stopAnswer();
  status("Stopped.");
});
for (const input of document.querySelectorAll("input[name=talk-mode], #talk-voice, #talk-stt, #talk-instructions")) {
  input.addEventListener("change", () => {
    if (!talk?.ready) return;
    if (talk.sending) flush(); // what was said so far goes out under the old settings
    send({ type: "session.update", session: session() });
    if (mode() === "ptt") send({ type: "input_audio_buffer.clear" }); // turns now start at a press
    talk.sending = mode() === "vad";
    $("talk-hold").setAttribute("aria-pressed", "false");
    setState(view.dataset.state);
    status(mode() === "vad" ? "Listening: speak when you like." : "Hold the button (or Space) while you speak.");
  });
}
const hold = $("talk-hold");
hold.addEventListener("pointerdown", (event) => {
  hold.setPointerCapture(event.pointerId);
  holdStart();
});
hold.addEventListener("pointerup", holdEnd);
hold.addEventListener("pointercancel", holdEnd);
hold.addEventListener("keydown", (event) => {
  if ((event.key === " " || event.key === "Enter") && !event.repeat) {
    event.preventDefault();
    holdStart();
  }
});
hold.addEventListener("keyup", (event) => {
  if (event.key === " " || event.key === "Enter") holdEnd();
});
hold.addEventListener("blur", holdEnd);
window.addEventListener("pagehide", hangUp);
view.dataset.state = "idle";
