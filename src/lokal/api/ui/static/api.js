// lokal's public HTTP API as the page uses it: the key, JSON calls, errors as the server words them.

const KEY = "lokal.apiKey";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

export const auth = {
  get key() {
    return localStorage.getItem(KEY) || "";
  },
  set key(value) {
    if (value) localStorage.setItem(KEY, value);
    else localStorage.removeItem(KEY);
  },
  // Set by the app: called with the server's message when a call was refused for its key.
  onUnauthorized: null,
};

export function headers(extra = {}) {
  const out = { ...extra };
  if (auth.key) out.Authorization = `Bearer ${auth.key}`;
  return out;
}

// The message of an error answer in any envelope lokal speaks.
export function errorMessage(status, body) {
  if (body && typeof body === "object") {
    const err = body.error ?? body.detail ?? body.message;
    if (typeof err === "string") return err;
    if (err && typeof err.message === "string") return err.message;
  }
  if (typeof body === "string" && body.trim()) return body.trim().slice(0, 300);
  return `The server answered ${status}.`;
}

async function fail(response) {
  const text = await response.text();
  let body = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: the text is the message
  }
  const error = new ApiError(response.status, errorMessage(response.status, body));
  if (response.status === 401 && auth.onUnauthorized) auth.onUnauthorized(error);
  throw error;
}

// fetch with the key; an error answer throws ApiError with the server's message.
export async function call(path, { method = "GET", json, body, signal, accept } = {}) {
  const init = { method, signal, headers: headers(accept ? { Accept: accept } : {}) };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError(0, `Cannot reach the server (${exc.message}).`);
  }
  if (!response.ok) await fail(response);
  return response;
}

export async function getJSON(path, options) {
  return (await call(path, options)).json();
}

export async function postJSON(path, json, options = {}) {
  return (await call(path, { ...options, method: "POST", json })).json();
}

// Server-sent events of a streaming POST: calls onEvent(parsed JSON) per data line.
export async function stream(path, json, { signal, onEvent }) {
  const response = await call(path, { method: "POST", json, signal, accept: "text/event-stream" });
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
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      onEvent(JSON.parse(data));
    }
  }
}

// A WebSocket to lokal (the Realtime API). Browsers cannot set headers on a WebSocket, so the
// key travels the way OpenAI's browser clients send it: in the subprotocol list, as
// "openai-insecure-api-key.<key>" beside "realtime" (the server answers with "realtime").
// Without a key no subprotocol is asked for. Throws ApiError when the key cannot be carried.
export function socket(path) {
  const url = new URL(path, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const protocols = auth.key ? ["realtime", `openai-insecure-api-key.${auth.key}`] : [];
  try {
    return new WebSocket(url, protocols);
  } catch (exc) {
    if (exc.name === "SyntaxError") {
      throw new ApiError(0, "This API key holds characters a WebSocket subprotocol cannot carry, so Talk cannot send it.");
    }
    throw exc;
  }
}
