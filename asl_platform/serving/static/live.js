// The demo's live modes with the hand found in this page: MediaPipe Hands (the platform's own copy, from
// /hands/) runs on each webcam frame here, and only the hand's 21 landmarks leave it: to POST /v1/landmarks
// for the answer shown over the video at once (the landmark model, this session's calibration profile, "not
// sure"), and to the tab's demo event (a hidden button's click) that spells or scores, at the pace Gradio
// answers. The video never leaves the device. Where this cannot run (no WebAssembly, the files missing,
// ?live=server), the page says so and shows the webcam component that sends frames to the server instead.
(() => {
  "use strict";
  const ROOT = location.pathname.replace(/\/demo(\/.*)?$/, "");
  const BASE = ROOT + "/hands/";
  const PADDINGS = [0.25, 0.0]; // as the Python detector (hands.detect.DetectionSettings.paddings), in order
  const MAX_ASKING = 2; // POST /v1/landmarks requests in flight at a time
  const ANSWER_WAIT_MS = 60; // the detector waits this long at most for a frame's answer
  const KEPT = 500; // timings kept per kind (record)
  const MAX_SIDE = 640; // hands.detect.DETECT_MAX_SIDE: larger frames are reduced before detection
  const CONNECTIONS = [[0, 1], [1, 2], [2, 3], [3, 4], [0, 5], [5, 6], [6, 7], [7, 8], [5, 9], [9, 10], [10, 11],
    [11, 12], [9, 13], [13, 14], [14, 15], [15, 16], [13, 17], [0, 17], [17, 18], [18, 19], [19, 20]];
  let loading = null;
  let pending = null;
  let profile = null; // the session's calibration profile (the Calibrate tab's), sent with each hand
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
      if (window.aslLiveMissing) throw new Error(window.aslLiveMissing); // the server said it has no hand models
      if (!window.Hands) await loadScript(BASE + "hands.js");
      const hands = new window.Hands({locateFile: (file) => BASE + file});
      // Inference on the CPU (XNNPACK), as the Python detector the landmark model was trained with runs it,
      // rather than WebGL: the same arithmetic, and where WebGL is software (no GPU) ~20x more frames a second.
      hands.setOptions({useCpuInference: true, maxNumHands: 1, modelComplexity: 1, minDetectionConfidence: 0.5, minTrackingConfidence: 0.5,
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

  // What to tell the learner when the camera does not start, and what to do about it.
  function cameraProblem(error) {
    const again = " Then press Start camera again.";
    switch (error && error.name) {
      case "NotAllowedError": case "SecurityError":
        return "The camera is blocked for this page: allow it (the camera icon in the address bar)." + again;
      case "NotReadableError": case "TrackStartError": case "AbortError":
        return "The camera is busy: another program or tab is using it. Close that." + again;
      case "NotFoundError": case "OverconstrainedError": case "DevicesNotFoundError":
        return "No camera was found: connect one." + again;
      case "NoCameraApi":
        return "This browser gives the page no camera (it needs https, or localhost)." + again;
      default:
        return `The camera did not start (${error && error.name}: ${error && error.message}).` + again;
    }
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

  // ``value`` onto ``list``, which keeps its last KEPT values (the stats read the recent ones only).
  function record(list, value) {
    list.push(value);
    if (list.length > 2 * KEPT) list.splice(0, KEPT);
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
      this.answer = root.querySelector(".asl-live-answer");
      this.work = document.createElement("canvas");
      this.seq = 0;
      this.sent = new Map(); // hand number -> when its frame was taken, for the demo event's answer
      this.latencies = []; // frame -> answer shown (ms), POST /v1/landmarks
      this.answered = []; // when each answer was shown (the last ones)
      this.answers = 0;
      this.updateLatencies = []; // frame -> the demo event's update shown (ms)
      this.updated = [];
      this.updates = 0;
      this.detectTimes = []; // ms a frame's detection took, the last ones
      this.requestTimes = []; // ms a POST /v1/landmarks took, sent -> answer read
      this.waiting = null; // the latest hand not yet asked about
      this.asking = 0; // requests in flight
      this.shownSeq = 0; // the number of the hand whose answer is shown
      this.waiter = null; // the detection loop, waiting for an answer (shownOrLate)
      this.running = false;
      this.frames = 0; // shown by the camera (countFrames)
      this.looked = 0; // the frame count when the last detection began
      this.onFrame = null;
    }

    say(text) { this.status.textContent = text; }

    async start() {
      if (this.running || this.starting) return;
      this.starting = true; // a second press while the camera opens starts nothing more
      try {
        try {
          await landmarker();
        } catch (error) {
          fallBack(error);
          return;
        }
        let stream;
        try {
          if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
            throw Object.assign(new Error("no camera API"), {name: "NoCameraApi"});
          }
          stream = await navigator.mediaDevices.getUserMedia({video: true, audio: false});
        } catch (error) {
          this.say(cameraProblem(error));
          return;
        }
        this.video.srcObject = stream;
        await this.video.play();
        this.running = true;
        this.generation = (this.generation || 0) + 1;
        this.countFrames();
        this.watchAnswers();
        this.say("Hand landmarks are found in this page: no video leaves your device.");
        this.loop(this.generation);
      } finally {
        this.starting = false;
      }
    }

    stop() {
      this.running = false;
      const stream = this.video.srcObject;
      if (stream) stream.getTracks().forEach((track) => track.stop());
      this.video.srcObject = null;
      // the loop may wait on a frame or an answer that will not come now: let it go, so that it ends here
      const frame = this.onFrame;
      this.onFrame = null;
      if (frame) frame();
      if (this.waiter) this.waiter.done();
      this.say("Camera stopped.");
    }

    // The camera's frames, counted as they are shown (started with the camera).
    countFrames() {
      if (!this.video.requestVideoFrameCallback) return;
      const tick = () => {
        if (!this.running) return;
        this.frames += 1;
        const resolve = this.onFrame;
        this.onFrame = null;
        if (resolve) resolve();
        this.video.requestVideoFrameCallback(tick);
      };
      this.video.requestVideoFrameCallback(tick);
    }

    // A frame not looked at yet: at once when the camera has shown one since the last detection began (a
    // detection and its answer take longer than a frame), else the next one it shows.
    nextFrame() {
      if (!this.video.requestVideoFrameCallback) return new Promise((resolve) => requestAnimationFrame(() => resolve()));
      if (this.frames > this.looked) return Promise.resolve();
      return new Promise((resolve) => { this.onFrame = resolve; });
    }

    async loop(generation) {
      while (this.running && this.generation === generation) { // a Stop then Start begins another: this one ends
        if (this.video.readyState >= 2 && this.video.videoWidth) {
          const started = performance.now();
          this.looked = this.frames;
          const hand = await findHand(this.video, this.video.videoWidth, this.video.videoHeight, this.work, false);
          record(this.detectTimes, performance.now() - started);
          drawHand(this.overlay, this.video, hand);
          const seq = ++this.seq;
          this.ask(hand, started, seq);
          this.post(hand, started, seq);
          await this.shownOrLate(seq);
        }
        await this.nextFrame();
      }
    }

    // Until the answer to hand ``seq`` is shown, at most ANSWER_WAIT_MS: the page's detector holds the page's
    // one thread while it runs, so an answer that comes back during a detection waits for it to end; a
    // nearby server answers within this pause, a far one overlaps with the next detections instead.
    shownOrLate(seq) {
      return new Promise((resolve) => {
        const done = () => { clearTimeout(timer); this.waiter = null; resolve(); };
        const timer = setTimeout(done, ANSWER_WAIT_MS);
        this.waiter = {seq, done};
      });
    }

    // The answer to the hand, from POST /v1/landmarks, shown at once. At most two requests at a time (one
    // travels while the other is answered); a hand that comes meanwhile waits, and a newer one replaces it.
    // An answer older than the one shown is dropped: what is shown is always about the latest frame.
    ask(hand, started, seq) {
      this.waiting = {hand, started, seq};
      if (this.asking < MAX_ASKING) this.askWaiting();
    }

    async askWaiting() {
      this.asking += 1;
      try {
        while (this.waiting && this.running) {
          const {hand, started, seq} = this.waiting;
          this.waiting = null;
          const body = {landmarks: hand ? hand.landmarks : null, handedness: hand ? hand.handedness : "Right"};
          if (profile) body.profile = profile;
          let answer;
          const asked = performance.now();
          try {
            const response = await fetch(ROOT + "/v1/landmarks", {method: "POST", body: JSON.stringify(body),
              headers: {"content-type": "application/json"}});
            answer = await response.json();
            if (!response.ok) throw new Error((answer.error && answer.error.message) || response.statusText);
          } catch (error) {
            this.showAnswer("No answer: " + error.message);
            if (this.waiter) this.waiter.done();
            await new Promise((resolve) => setTimeout(resolve, 1000)); // the server is down or refuses: no storm
            continue;
          }
          record(this.requestTimes, performance.now() - asked);
          if (seq <= this.shownSeq) continue;
          this.shownSeq = seq;
          this.showAnswer(!answer.hand || !answer.hand.found ? "No hand in view"
            : `${answer.label} ${Math.round(answer.probability * 100)}%` + (answer.confident ? "" : " - not sure")
              + (answer.calibrated ? " (your calibration)" : ""));
          const now = performance.now();
          record(this.latencies, now - started);
          record(this.answered, now);
          this.answers += 1;
          if (this.waiter && this.waiter.seq <= seq) this.waiter.done();
        }
      } finally {
        this.asking -= 1;
      }
    }

    showAnswer(text) { if (this.answer && this.answer.textContent !== text) this.answer.textContent = text; }

    // The hand to the demo: the hidden button's event takes it (``take``); while one is answered, Gradio
    // keeps only the latest click (trigger_mode "always_last").
    post(hand, started, seq) {
      const button = document.querySelector(`#${this.name}-live-tick`);
      if (!button) return;
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
        record(this.updateLatencies, now - started);
        record(this.updated, now);
        this.updates += 1;
      });
      this.observer.observe(target, {subtree: true, childList: true, characterData: true});
    }

    // Answers shown (POST /v1/landmarks) and the demo event's updates (spelling, practice): how many, per
    // second over the last ``window_s``, the median frame -> shown (ms) of the last 100; frames through the
    // detector (``sent``), the median detection and request times (ms).
    stats(window_s = 5) {
      const now = performance.now();
      const rate = (times) => times.filter((t) => now - t <= window_s * 1000).length / window_s;
      return {answers: this.answers, answers_per_s: rate(this.answered), p50_ms: median(this.latencies.slice(-100)),
        updates: this.updates, updates_per_s: rate(this.updated), updates_p50_ms: median(this.updateLatencies.slice(-100)),
        sent: this.seq, detect_p50_ms: median(this.detectTimes.slice(-100)),
        request_p50_ms: median(this.requestTimes.slice(-100))};
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
    setProfile: (document) => { profile = document && typeof document === "object" && document.shots ? document : null; },
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
