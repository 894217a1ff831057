// Live captions: microphone -> AudioWorklet (16 kHz PCM s16le) -> WebSocket -> captions on the page.
"use strict";

const STREAM_PATH = "/v1/audio/transcriptions/stream";
const TARGET_RATE = 16000;
const FRAME_MS = 100;
const MAX_PENDING_FRAMES = 50;
const END_TIMEOUT_MS = 15000; // after "end", how long to wait for session.end before closing ourselves

const ui = {
  start: document.getElementById("start"),
  stop: document.getElementById("stop"),
  model: document.getElementById("model"),
  apiKey: document.getElementById("api-key"),
  keyterms: document.getElementById("keyterms"),
  status: document.getElementById("status"),
  error: document.getElementById("error"),
  finals: document.getElementById("finals"),
  partial: document.getElementById("partial"),
  hint: document.getElementById("hint"),
  transcriptBox: document.getElementById("transcript-box"),
  transcript: document.getElementById("transcript"),
};

// The page's own query string can ask for a context at the device rate (`?context_rate=native`) or at a
// given rate, so tests can exercise the worklet's resampler; by default the context runs at 16 kHz.
const pageParams = new URLSearchParams(location.search);

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text || state;
}

function showError(code, message) {
  ui.error.hidden = false;
  ui.error.replaceChildren(codeElement(code), document.createTextNode(" " + message));
}

function codeElement(code) {
  const element = document.createElement("strong");
  element.className = "code";
  element.textContent = code;
  return element;
}

function clearCaptions() {
  ui.error.hidden = true;
  ui.error.replaceChildren();
  ui.finals.replaceChildren();
  ui.partial.textContent = "";
  ui.transcript.textContent = "";
  ui.transcriptBox.hidden = true;
}

function appendFinal(event) {
  ui.hint.hidden = true;
  ui.partial.textContent = "";
  if (!event.text.trim()) return;
  const line = document.createElement("p");
  line.className = "line";
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = formatTime(event.start);
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = event.text.trim();
  line.append(time, text);
  ui.finals.append(line);
  line.scrollIntoView({ block: "nearest" });
}

function showPartial(event) {
  ui.hint.hidden = true;
  ui.partial.textContent = event.text.trim();
}

function formatTime(seconds) {
  const whole = Math.floor(seconds);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

function streamUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = new URLSearchParams({
    sample_rate: String(TARGET_RATE),
    interim_results: "true",
    model: ui.model.value,
  });
  const keyterms = ui.keyterms.value.trim();
  if (keyterms) query.set("keyterms", keyterms); // names the model should expect: spelt as typed
  const key = ui.apiKey.value.trim();
  if (key) query.set("api_key", key);
  return `${scheme}//${location.host}${STREAM_PATH}?${query}`;
}

// A context at 16 kHz spares the worklet any resampling; a browser that cannot connect a microphone to a
// context of another rate (Firefox) gets one at the device rate, and the worklet resamples.
async function openAudio(stream) {
  const requested = pageParams.get("context_rate") || String(TARGET_RATE);
  const options = requested === "native" ? {} : { sampleRate: Number(requested) };
  try {
    return await connectAudio(new AudioContext(options), stream);
  } catch (error) {
    if (requested === "native") throw error;
    return connectAudio(new AudioContext(), stream);
  }
}

async function connectAudio(context, stream) {
  try {
    const source = context.createMediaStreamSource(stream);
    await context.audioWorklet.addModule("/static/pcm-worklet.js");
    const encoder = new AudioWorkletNode(context, "pcm-encoder", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      channelCount: 1,
      channelCountMode: "explicit",
      processorOptions: { targetRate: TARGET_RATE, frameMs: FRAME_MS },
    });
    source.connect(encoder);
    await context.resume();
    return { context, source, encoder };
  } catch (error) {
    await context.close();
    throw error;
  }
}

class CaptionSession {
  constructor() {
    this.ended = false; // session.end arrived, or the server reported an error
    this.stopping = false;
    this.endSent = false;
    this.endTimer = null;
    this.audio = null;
    this.stream = null;
    this.socket = null;
    this.pending = [];
  }

  async start() {
    if (!window.isSecureContext || !navigator.mediaDevices) {
      throw new PageError("insecure_context", "the microphone needs https (or http on localhost)");
    }
    setStatus("starting", "asking for the microphone…");
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    this.audio = await openAudio(this.stream);
    ui.status.dataset.contextRate = String(this.audio.context.sampleRate);
    setStatus("connecting", "connecting…");
    this.socket = this.openSocket();
    this.audio.encoder.port.onmessage = (event) => this.onAudioFrame(event.data);
  }

  openSocket() {
    const socket = new WebSocket(streamUrl());
    socket.binaryType = "arraybuffer";
    socket.onmessage = (event) => this.onServerEvent(JSON.parse(event.data));
    socket.onclose = (event) => this.onClose(event);
    socket.onopen = () => {
      for (const frame of this.pending.splice(0)) socket.send(frame);
    };
    return socket;
  }

  // Frames captured while the socket connects wait (a few seconds' worth at most), so no first word is lost.
  onAudioFrame(data) {
    if (data === "flushed") {
      this.sendEnd();
    } else if (this.socket.readyState === WebSocket.OPEN && !this.endSent) {
      this.socket.send(data);
    } else if (this.socket.readyState === WebSocket.CONNECTING && this.pending.length < MAX_PENDING_FRAMES) {
      this.pending.push(data);
    }
  }

  onServerEvent(event) {
    switch (event.type) {
      case "session.begin":
        setStatus("listening", `listening · ${event.model}`);
        ui.status.title = event.session_id;
        break;
      case "transcript.partial":
        showPartial(event);
        break;
      case "transcript.final":
        appendFinal(event);
        break;
      case "vad.speech_start":
        ui.status.classList.add("speaking");
        break;
      case "vad.speech_end":
        ui.status.classList.remove("speaking");
        break;
      case "session.end":
        this.ended = true;
        ui.transcript.textContent = event.transcript || "(nothing was said)";
        ui.transcriptBox.hidden = false;
        setStatus("ended", `ended · ${event.total_duration.toFixed(1)} s of audio`);
        break;
      case "error":
        showError(event.code, event.message);
        if (event.code !== "invalid_message") this.ended = true; // the server closes next
        break;
    }
  }

  onClose(event) {
    if (!this.ended) {
      const reason = event.reason ? `: ${event.reason}` : "";
      showError("connection_closed", `the connection closed unexpectedly (code ${event.code}${reason})`);
    }
    if (ui.status.dataset.state !== "ended") setStatus("closed");
    ui.status.classList.remove("speaking");
    clearTimeout(this.endTimer);
    this.releaseAudio();
    sessionFinished(this);
  }

  // Stop: the worklet sends what it still holds, then "end" asks the server to finalise and say session.end.
  stop() {
    if (this.stopping) return;
    this.stopping = true;
    setStatus("finishing", "finishing…");
    if (this.audio && this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.audio.encoder.port.postMessage("flush");
    } else {
      this.sendEnd();
    }
    this.endTimer = setTimeout(() => this.socket && this.socket.close(1000, "no session.end"), END_TIMEOUT_MS);
  }

  sendEnd() {
    this.endSent = true;
    this.releaseAudio();
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify({ type: "end" }));
    } else if (this.socket && this.socket.readyState === WebSocket.CONNECTING) {
      this.ended = true; // closing on purpose: not an unexpected close
      this.socket.close(1000, "stopped before connecting");
    }
  }

  releaseAudio() {
    if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
    if (this.audio) {
      this.audio.source.disconnect();
      this.audio.context.close();
    }
    this.stream = null;
    this.audio = null;
  }
}

class PageError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

let current = null;

function sessionFinished(session) {
  if (current !== session) return;
  current = null;
  ui.start.disabled = false;
  ui.stop.disabled = true;
}

document.getElementById("controls").addEventListener("submit", (event) => event.preventDefault());

ui.start.addEventListener("click", async () => {
  if (current) return;
  clearCaptions();
  ui.start.disabled = true;
  current = new CaptionSession();
  const session = current;
  try {
    await session.start();
    ui.stop.disabled = false;
  } catch (error) {
    showError(error.code || error.name || "error", error.message);
    setStatus("idle");
    session.ended = true;
    session.releaseAudio();
    if (session.socket) session.socket.close();
    sessionFinished(session);
  }
});

ui.stop.addEventListener("click", () => {
  if (current) current.stop();
  ui.stop.disabled = true;
});
