// AudioWorklet: microphone input -> 16 kHz mono PCM s16le, posted to the page in ~100 ms frames.
//
// The context may run at any rate (48 kHz, 44.1 kHz, or 16 kHz where the browser honours the page's
// request). Resampling evaluates a Blackman-windowed sinc at each output instant. When downsampling, its
// cutoff sits just below the output Nyquist so nothing above 8 kHz folds back into the speech band
// (picking every third sample of 48 kHz audio would alias it).

const ZERO_CROSSINGS = 16; // each side of the kernel: wider is a sharper cutoff and costs more
const CUTOFF = 0.9; // fraction of the output Nyquist kept
const TABLE_STEPS = 256; // kernel table entries per input sample (interpolated between)

class SincResampler {
  constructor(inputRate, outputRate) {
    this.step = inputRate / outputRate; // input samples per output sample
    this.passthrough = inputRate === outputRate;
    this.cutoff = Math.min(1, outputRate / inputRate) * CUTOFF; // in cycles per 2 input samples
    this.halfWidth = Math.ceil(ZERO_CROSSINGS / this.cutoff); // in input samples
    this.table = kernelTable(this.cutoff, this.halfWidth);
    this.buffer = new Float32Array(4096);
    this.length = 0; // samples held in buffer
    this.position = this.halfWidth; // next output instant, in input samples from buffer[0]
    this.buffer.fill(0, 0, this.halfWidth); // silence before the first sample keeps the kernel whole
    this.length = this.halfWidth;
  }

  // Appends input samples and returns the output samples that are now complete.
  push(input) {
    if (this.passthrough) return Float32Array.from(input);
    this.append(input);
    const out = [];
    while (this.position + this.halfWidth < this.length) {
      out.push(this.sampleAt(this.position));
      this.position += this.step;
    }
    this.discardBefore(Math.floor(this.position) - this.halfWidth);
    return Float32Array.from(out);
  }

  append(input) {
    if (this.length + input.length > this.buffer.length) {
      const grown = new Float32Array(2 * (this.length + input.length));
      grown.set(this.buffer.subarray(0, this.length));
      this.buffer = grown;
    }
    this.buffer.set(input, this.length);
    this.length += input.length;
  }

  discardBefore(index) {
    if (index <= 0) return;
    this.buffer.copyWithin(0, index, this.length);
    this.length -= index;
    this.position -= index;
  }

  sampleAt(t) {
    const first = Math.ceil(t - this.halfWidth);
    const last = Math.floor(t + this.halfWidth);
    const table = this.table;
    let sum = 0;
    for (let i = first; i <= last; i++) {
      const x = (t - i + this.halfWidth) * TABLE_STEPS;
      const j = Math.floor(x);
      sum += this.buffer[i] * (table[j] + (x - j) * (table[j + 1] - table[j]));
    }
    return sum;
  }
}

// The kernel sampled TABLE_STEPS times per input sample across [-halfWidth, halfWidth]: no trigonometry
// per tap in the audio thread.
function kernelTable(cutoff, halfWidth) {
  const table = new Float32Array(2 * halfWidth * TABLE_STEPS + 2);
  for (let j = 0; j < table.length; j++) {
    const distance = Math.min(j / TABLE_STEPS - halfWidth, halfWidth);
    const x = cutoff * distance;
    const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
    const w = (distance / halfWidth + 1) / 2; // 0..1 across the window
    const blackman = 0.42 - 0.5 * Math.cos(2 * Math.PI * w) + 0.08 * Math.cos(4 * Math.PI * w);
    table[j] = cutoff * sinc * blackman;
  }
  return table;
}

class PcmEncoder extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate = 16000, frameMs = 100 } = options.processorOptions || {};
    this.resampler = new SincResampler(sampleRate, targetRate);
    this.frame = new Int16Array(Math.round((targetRate * frameMs) / 1000));
    this.filled = 0;
    // On "flush" the partly filled frame goes out, then "flushed" tells the page that nothing is left.
    this.port.onmessage = (event) => {
      if (event.data !== "flush") return;
      this.flush();
      this.port.postMessage("flushed");
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      this.encode(this.resampler.push(downmix(channels)));
    }
    return true; // keep running while the page holds the node
  }

  encode(samples) {
    for (const value of samples) {
      const clipped = Math.max(-1, Math.min(1, value));
      this.frame[this.filled++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
      if (this.filled === this.frame.length) this.flush();
    }
  }

  flush() {
    if (this.filled === 0) return;
    const bytes = this.frame.slice(0, this.filled).buffer;
    this.port.postMessage(bytes, [bytes]);
    this.filled = 0;
  }
}

function downmix(channels) {
  if (channels.length === 1) return channels[0];
  const mixed = new Float32Array(channels[0].length);
  for (const channel of channels) {
    for (let i = 0; i < mixed.length; i++) mixed[i] += channel[i] / channels.length;
  }
  return mixed;
}

registerProcessor("pcm-encoder", PcmEncoder);
