// AudioWorklet processor for /phone: converts the microphone's float samples (at the AudioContext's own rate)
// to PCM16 and posts ~20 ms chunks to the page, which sends them to the gateway. Replaces the deprecated
// ScriptProcessorNode (https://webaudio.github.io/web-audio-api/#AudioWorklet).
class MicPcm16 extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate / 50);  // 20 ms at the context's real rate
    this.chunk = new Int16Array(this.size);
    this.filled = 0;
  }
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      for (let i = 0; i < channel.length; i++) {
        this.chunk[this.filled++] = Math.max(-32768, Math.min(32767, Math.round(channel[i] * 32768)));
        if (this.filled === this.size) {
          this.port.postMessage(this.chunk.buffer, [this.chunk.buffer]);  // transferred: detached here
          this.chunk = new Int16Array(this.size);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor("mic-pcm16", MicPcm16);
