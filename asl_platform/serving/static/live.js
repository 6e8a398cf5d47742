// The demo's live modes with the hand found in this page: MediaPipe Hands (the platform's own copy, from
// /hands/) runs on each webcam frame here, and only the hand's 21 landmarks go to the demo (a hidden
// textbox's input event, answered from the landmark model through POST /v1/landmarks' path). The video
// never leaves the device. Where this cannot run (no WebAssembly, the files missing, ?live=server), the
// page says so and shows the webcam component that sends frames to the server instead.
(() => {
  "use strict";
  const ROOT = location.pathname.replace(/\/demo(\/.*)?$/, "");
  const BASE = ROOT + "/hands/";
  const PADDINGS = [0.25, 0.0]; // as the Python detector (hands.detect.DetectionSettings.paddings), in order
  const MAX_SIDE = 640; // hands.detect.DETECT_MAX_SIDE: larger frames are reduced before detection
  const CONNECTIONS = [[0, 1], [1, 2], [2, 3], [3, 4], [0, 5], [5, 6], [6, 7], [7, 8], [5, 9], [9, 10], [10, 11],
    [11, 12], [9, 13], [13, 14], [14, 15], [15, 16], [13, 17], [0, 17], [17, 18], [18, 19], [19, 20]];
  let loading = null;
  let pending = null;
  let busy = Promise.resolve();

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new Error("could not load " + src));
      document.head.appendChild(script);
    });
  }

  // The one MediaPipe Hands graph of the page, made on first use.
  function landmarker() {
    if (loading) return loading;
    loading = (async () => {
      if (typeof WebAssembly !== "object") throw new Error("this browser has no WebAssembly");
      if (new URLSearchParams(location.search).get("live") === "server") throw new Error("the page asked for the server (?live=server)");
      if (!window.Hands) await loadScript(BASE + "hands.js");
      const hands = new window.Hands({locateFile: (file) => BASE + file});
      hands.setOptions({maxNumHands: 1, modelComplexity: 1, minDetectionConfidence: 0.5, minTrackingConfidence: 0.5,
        selfieMode: false});
      hands.onResults((results) => { const done = pending; pending = null; if (done) done(results); });
      await hands.initialize();
      return hands;
    })();
    return loading;
  }

  // ``source`` (w x h) drawn on ``canvas`` with a border of ``padding`` of each side, its edge pixels
  // repeated (numpy's pad mode "edge", what the Python detector sends MediaPipe).
  function drawPadded(source, width, height, padding, canvas) {
    const px = Math.round(padding * width), py = Math.round(padding * height);
    canvas.width = width + 2 * px;
    canvas.height = height + 2 * py;
    const context = canvas.getContext("2d", {willReadFrequently: false});
    context.imageSmoothingEnabled = true;
    context.drawImage(source, px, py, width, height);
    if (px || py) {
      context.imageSmoothingEnabled = false;
      context.drawImage(canvas, px, py, width, 1, px, 0, width, py);
      context.drawImage(canvas, px, py + height - 1, width, 1, px, py + height, width, py);
      context.drawImage(canvas, px, 0, 1, canvas.height, 0, 0, px, canvas.height);
      context.drawImage(canvas, px + width - 1, 0, 1, canvas.height, px + width, 0, px, canvas.height);
    }
    return {px, py};
  }

  // One detection, serialised (one graph): the results of this send.
  function send(hands, canvas) {
    const run = busy.then(() => new Promise((resolve, reject) => {
      pending = resolve;
      hands.send({image: canvas}).catch(reject);
    }));
    busy = run.catch(() => undefined);
    return run;
  }

  // A blank frame through the graph: it loses the hand it was tracking, so the next frame is searched whole
  // (palm detection), as in static-image mode. hands.reset() would do it too, but rebuilds the graph and its
  // WebGL context: tens of seconds a photo where WebGL is software.
  // (Blank at the size of the frame that follows: a new size costs the graph new buffers.)
  async function forget(hands, canvas, width, height) {
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d");
    context.fillStyle = "#000";
    context.fillRect(0, 0, width, height);
    await send(hands, canvas);
  }

  // The hand in ``source`` (its natural size w x h) in its pixels: x right, y down, z in the units of x
  // (what /predict's hand block gives), or null. ``still``: a photo (each padding tried, no tracking).
  async function findHand(source, width, height, canvas, still) {
    const hands = await landmarker();
    const shrink = Math.min(1, MAX_SIDE / Math.max(width, height));
    const w = Math.max(1, Math.round(width * shrink)), h = Math.max(1, Math.round(height * shrink));
    for (const padding of still ? PADDINGS : PADDINGS.slice(0, 1)) {
      if (still) await forget(hands, canvas, w + 2 * Math.round(padding * w), h + 2 * Math.round(padding * h));
      const {px, py} = drawPadded(source, w, h, padding, canvas);
      const results = await send(hands, canvas);
      if (results.multiHandLandmarks && results.multiHandLandmarks.length) {
        const sx = w / width, sy = h / height;
        const landmarks = results.multiHandLandmarks[0].map((p) => [
          (p.x * canvas.width - px) / sx, (p.y * canvas.height - py) / sy, p.z * canvas.width / sx]);
        const label = results.multiHandedness[0];
        return {landmarks, handedness: label.label, score: label.score};
      }
    }
    return null;
  }

  function drawHand(canvas, video, hand) {
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    const context = canvas.getContext("2d");
    context.clearRect(0, 0, canvas.width, canvas.height);
    if (!hand) return;
    context.strokeStyle = "#00e676";
    context.lineWidth = Math.max(2, canvas.width / 160);
    for (const [a, b] of CONNECTIONS) {
      context.beginPath();
      context.moveTo(hand.landmarks[a][0], hand.landmarks[a][1]);
      context.lineTo(hand.landmarks[b][0], hand.landmarks[b][1]);
      context.stroke();
    }
    context.fillStyle = "#ff1744";
    for (const [x, y] of hand.landmarks) context.fillRect(x - 2, y - 2, 4, 4);
  }

  function median(values) {
    if (!values.length) return null;
    const sorted = [...values].sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)];
  }

  // One tab's live view: <div class="asl-live" data-live="practice"> with a video, an overlay canvas, a
  // status line; the tab's hidden textbox #<name>-live-hand takes each hand, #<name>-live-seq echoes
  // the number of the hand it answered (the page measures frame -> answer shown with it).
  class LiveView {
    constructor(root) {
      this.root = root;
      this.name = root.dataset.live;
      this.video = root.querySelector("video");
      this.overlay = root.querySelector("canvas");
      this.status = root.querySelector(".asl-live-status");
      this.work = document.createElement("canvas");
      this.seq = 0;
      this.sent = new Map();
      this.latencies = [];
      this.answered = [];
      this.running = false;
    }

    say(text) { this.status.textContent = text; }

    async start() {
      if (this.running) return;
      try {
        await landmarker();
      } catch (error) {
        fallBack(error);
        return;
      }
      const stream = await navigator.mediaDevices.getUserMedia({video: true, audio: false});
      this.video.srcObject = stream;
      await this.video.play();
      this.running = true;
      this.watchAnswers();
      this.say("Hand landmarks are found in this page: no video leaves your device.");
      this.loop();
    }

    stop() {
      this.running = false;
      const stream = this.video.srcObject;
      if (stream) stream.getTracks().forEach((track) => track.stop());
      this.video.srcObject = null;
      this.say("Camera stopped.");
    }

    nextFrame() {
      return new Promise((resolve) => (this.video.requestVideoFrameCallback
        ? this.video.requestVideoFrameCallback(() => resolve()) : requestAnimationFrame(() => resolve())));
    }

    async loop() {
      while (this.running) {
        if (this.video.readyState >= 2 && this.video.videoWidth) {
          const started = performance.now();
          const hand = await findHand(this.video, this.video.videoWidth, this.video.videoHeight, this.work, false);
          drawHand(this.overlay, this.video, hand);
          this.post(hand, started);
        }
        await this.nextFrame();
      }
    }

    // The hand to the demo: the hidden button's event takes it (``take``); while one is answered, Gradio
    // keeps only the latest click (trigger_mode "always_last").
    post(hand, started) {
      const button = document.querySelector(`#${this.name}-live-tick`);
      if (!button) return;
      const seq = ++this.seq;
      this.sent.set(seq, started);
      if (this.sent.size > 200) this.sent.delete(this.sent.keys().next().value);
      this.latest = JSON.stringify({seq, landmarks: hand ? hand.landmarks : null,
        handedness: hand ? hand.handedness : "Right"});
      button.click();
    }

    watchAnswers() {
      const target = document.getElementById(`${this.name}-live-seq`);
      if (!target || this.observer) return;
      this.observer = new MutationObserver(() => {
        const seq = parseInt(target.textContent.replace(/\D+/g, ""), 10);
        const started = this.sent.get(seq);
        if (started === undefined) return;
        this.sent.delete(seq);
        const now = performance.now();
        this.latencies.push(now - started);
        this.answered.push(now);
      });
      this.observer.observe(target, {subtree: true, childList: true, characterData: true});
    }

    // answers shown per second over the last ``window_s``, and the median frame -> answer shown (ms)
    stats(window_s = 5) {
      const now = performance.now();
      const recent = this.answered.filter((t) => now - t <= window_s * 1000);
      return {answers: this.answered.length, answers_per_s: recent.length / window_s,
        p50_ms: median(this.latencies.slice(-100)), sent: this.seq};
    }
  }

  const views = new Map();
  function view(root) {
    if (!views.has(root)) views.set(root, new LiveView(root));
    return views.get(root);
  }

  // The server's frame path instead (CSS: body.asl-live-server shows the webcam components, hides the live views).
  function fallBack(error) {
    document.body.classList.remove("asl-live-browser");
    document.body.classList.add("asl-live-server");
    window.aslLive.fallback = error.message;
    showReason();
  }

  function showReason() {
    const text = window.aslLive.fallback || "";
    for (const reason of document.querySelectorAll(".asl-live-reason")) {
      if (reason.textContent !== text) reason.textContent = text; // unchanged: no mutation, no loop
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest(".asl-live-start, .asl-live-stop");
    if (!button) return;
    const root = button.closest(".asl-live");
    if (button.classList.contains("asl-live-start")) view(root).start(); else view(root).stop();
  });

  window.aslLive = {
    findHand, landmarker, fallback: null,
    take: (name) => { for (const v of views.values()) if (v.name === name) return v.latest || ""; return ""; },
    stats: (name) => { for (const v of views.values()) if (v.name === name) return v.stats(); return null; },
  };
  function boot() {
    document.body.classList.add("asl-live-browser");
    landmarker().catch(fallBack); // early: the files load while the learner reads, and a failure shows at once
    new MutationObserver(() => { if (window.aslLive.fallback) showReason(); })
      .observe(document.body, {childList: true, subtree: true}); // tabs render their blocks later
  }
  if (document.body) boot(); else document.addEventListener("DOMContentLoaded", boot);
})();
