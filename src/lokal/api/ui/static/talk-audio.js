// Audio for the Talk view: the microphone as 24 kHz mono pcm16, and answers played back gapless.
// The Realtime API's audio is pcm16 little-endian at 24 kHz, base64 in JSON events.

export const RATE = 24000;

export function toBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

export function fromBase64(text) {
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

// Float samples in [-1, 1] as pcm16 little-endian bytes.
export function pcm16(samples) {
  const out = new Uint8Array(samples.length * 2);
  const view = new DataView(out.buffer);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return out;
}

// Linear-interpolation resampling of a stream that arrives in blocks (state carries across them).
export class Resampler {
  constructor(from, to) {
    this.step = from / to;
    this.last = 0; // the previous block's final sample, index 0 of the next joined block
    this.pos = 1; // where the next output sample lies, in samples of the joined block
  }

  push(input) {
    if (this.step === 1) return Float32Array.from(input);
    const joined = new Float32Array(input.length + 1);
    joined[0] = this.last;
    joined.set(input, 1);
    const end = joined.length - 1;
    const out = new Float32Array(Math.max(0, Math.ceil((end - this.pos) / this.step)));
    let n = 0;
    let t = this.pos;
    for (; t < end && n < out.length; t += this.step) {
      const i = Math.floor(t);
      const frac = t - i;
      out[n++] = joined[i] * (1 - frac) + joined[i + 1] * frac;
    }
    this.pos = t - end;
    this.last = joined[end];
    return n === out.length ? out : out.subarray(0, n);
  }
}

function microphoneError(exc) {
  if (exc.name === "NotAllowedError" || exc.name === "SecurityError") {
    return new Error("The microphone was refused. Allow this page to use it (the browser's site settings) and start again.");
  }
  if (exc.name === "NotFoundError" || exc.name === "OverconstrainedError") return new Error("No microphone was found.");
  if (exc.name === "NotReadableError") return new Error("The microphone is in use by another program or cannot be read.");
  return new Error(`The microphone could not be opened: ${exc.message}`);
}

// Opens the microphone; onSamples gets Float32Arrays at 24 kHz. Resolves to { close() }.
// An AudioWorklet taps the input; where there is none, a ScriptProcessor does.
export async function openMicrophone(onSamples) {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("The microphone is not available here: browsers offer it only to https pages and localhost.");
  }
  let media;
  try {
    media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true } });
  } catch (exc) {
    throw microphoneError(exc);
  }
  const context = new AudioContext();
  try {
    const resampler = new Resampler(context.sampleRate, RATE);
    const take = (block) => onSamples(resampler.push(block));
    const source = context.createMediaStreamSource(media);
    const mute = context.createGain(); // keeps the tap pulled by the graph without playing the microphone
    mute.gain.value = 0;
    mute.connect(context.destination);
    let tap;
    if (context.audioWorklet) {
      await context.audioWorklet.addModule("/ui/talk-worklet.js");
      tap = new AudioWorkletNode(context, "lokal-microphone-tap", { numberOfInputs: 1, numberOfOutputs: 1, channelCount: 1 });
      tap.port.onmessage = (event) => take(event.data);
    } else {
      tap = context.createScriptProcessor(4096, 1, 1);
      tap.onaudioprocess = (event) => take(Float32Array.from(event.inputBuffer.getChannelData(0)));
    }
    source.connect(tap);
    tap.connect(mute);
    await context.resume();
    return {
      close() {
        media.getTracks().forEach((track) => track.stop());
        tap.disconnect();
        context.close();
      },
    };
  } catch (exc) {
    media.getTracks().forEach((track) => track.stop());
    context.close();
    throw exc;
  }
}

// Plays pcm16 24 kHz chunks back to back on one clock; stop() silences at once (Stop, barge-in).
// `played` counts the samples heard so far (by the audio clock, so a long chunk counts as it
// plays); onChange is called every 100 ms while playing and when playback stops.
export class Player {
  constructor(onChange) {
    this.context = new AudioContext();
    this.onChange = onChange;
    this.sources = new Map(); // source -> { start, n }
    this.next = 0;
    this.carry = null; // an odd byte left over from the previous chunk
    this.done = 0; // samples of chunks played to their end, or up to a stop
    this.received = 0;
    this.ticker = 0;
  }

  resume() {
    return this.context.resume();
  }

  heard(start, n) {
    return Math.max(0, Math.min(n, Math.round((this.context.currentTime - start) * RATE)));
  }

  get played() {
    let sum = this.done;
    for (const { start, n } of this.sources.values()) sum += this.heard(start, n);
    return sum;
  }

  get playing() {
    return this.sources.size > 0;
  }

  play(bytes) {
    if (this.carry !== null) {
      const joined = new Uint8Array(bytes.length + 1);
      joined[0] = this.carry;
      joined.set(bytes, 1);
      bytes = joined;
      this.carry = null;
    }
    if (bytes.length % 2) {
      this.carry = bytes[bytes.length - 1];
      bytes = bytes.subarray(0, bytes.length - 1);
    }
    const n = bytes.length / 2;
    if (!n) return;
    this.received += n;
    const buffer = this.context.createBuffer(1, n, RATE);
    const data = buffer.getChannelData(0);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < n; i++) data[i] = view.getInt16(i * 2, true) / 0x8000;
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    const now = this.context.currentTime;
    if (this.next < now + 0.01) this.next = now + 0.05; // first chunk, or the stream fell behind: a short lead
    source.start(this.next);
    this.sources.set(source, { start: this.next, n });
    this.next += buffer.duration;
    source.onended = () => {
      if (!this.sources.delete(source)) return;
      this.done += n;
      this.tick();
    };
    if (!this.ticker) this.ticker = setInterval(() => this.tick(), 100);
  }

  tick() {
    if (!this.playing) {
      clearInterval(this.ticker);
      this.ticker = 0;
    }
    this.onChange();
  }

  stop() {
    const had = this.playing;
    for (const [source, { start, n }] of this.sources) {
      this.done += this.heard(start, n);
      source.onended = null;
      source.stop();
    }
    this.sources.clear();
    this.next = 0;
    this.carry = null;
    if (had) this.tick();
  }

  close() {
    this.stop();
    clearInterval(this.ticker);
    this.ticker = 0;
    this.context.close();
  }
}
