// The Talk view's microphone tap (an AudioWorklet): hands blocks of about 40 ms of input
// samples to the page, which resamples them to 24 kHz pcm16 for the Realtime API.
const BLOCK = 2048;

class MicrophoneTap extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(BLOCK);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0]?.[0];
    if (!channel) return true;
    let from = 0;
    while (from < channel.length) {
      const take = Math.min(channel.length - from, BLOCK - this.filled);
      this.block.set(channel.subarray(from, from + take), this.filled);
      this.filled += take;
      from += take;
      if (this.filled === BLOCK) {
        this.port.postMessage(this.block);
        this.block = new Float32Array(BLOCK);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("lokal-microphone-tap", MicrophoneTap);
