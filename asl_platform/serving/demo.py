"""Gradio demo, mounted at ``/demo`` by the HTTP app: a photo (upload or webcam snapshot) -> top-5
letters, a fingerspelling mode where a live webcam stream builds text letter by letter, and a
practice mode that teaches the letters (``practice``).

It classifies through the same backend as ``/predict`` (so through ``@serve.batch`` on Serve), and
it loads nothing from the internet: system fonts instead of Google Fonts, no analytics.

The fingerspelling thresholds (``SPELLING_KEYS``) are read from ``settings`` each time they are used,
so the ingress's ``reconfigure`` (Serve ``user_config``) changes them for every open session at once.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from asl_platform.config import ServeConfig
from asl_platform.hands.shapes import DESCRIPTIONS, MOTION_LETTERS, draw_shape
from asl_platform.serving.practice import Practice, check, model_shapes, practice_letters
from asl_platform.serving.protocol import ApiError, top_predictions

if TYPE_CHECKING:
    import gradio as gr
    from fastapi import FastAPI

    from asl_platform.serving.backends import Backend

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline demo

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Consolas", "Liberation Mono", "monospace"]
# The ServeConfig keys the demo reads at use time: the ingress deployment's user_config.
SPELLING_KEYS = ("spell_hold_s", "spell_min_probability")


@dataclass
class Speller:
    """Turns a stream of per-frame predictions into text.

    A sign is committed once it has been the confident top prediction for ``hold_s`` seconds.
    The same letter is not committed twice in a row until the hand shows something else (drop the
    hand for a moment, ``nothing``, to spell a double letter); ``del`` repeats while held, like a
    backspace key. ``space`` adds a space, ``nothing`` adds nothing. Each frame's answer is the
    mean of the last ``window`` frames' probabilities (``smooth``): one odd frame does not restart a hold.
    """

    hold_s: float = 1.0
    min_probability: float = 0.6
    text: str = ""
    candidate: str | None = None
    since: float = 0.0
    committed: str | None = None
    window: int = 3
    recent: list[dict[str, float]] = field(default_factory=list)

    def smooth(self, top: dict[str, float]) -> tuple[str, float]:
        """Add one frame's ``{label: probability}`` and return the best label over the last frames."""
        self.recent = [*self.recent, top][-self.window:]
        labels = {label for frame in self.recent for label in frame}
        mean = {label: sum(frame.get(label, 0.0) for frame in self.recent) / len(self.recent) for label in labels}
        label = max(mean, key=mean.get)
        return label, mean[label]

    @classmethod
    def of(cls, settings: ServeConfig) -> Speller:
        return cls(settings.spell_hold_s, settings.spell_min_probability)

    def follow(self, settings: ServeConfig) -> None:
        """Take the thresholds ``settings`` hold now (a session's Speller outlives a reconfigure)."""
        self.hold_s, self.min_probability = settings.spell_hold_s, settings.spell_min_probability

    def update(self, label: str, probability: float, now: float) -> str | None:
        """Feed one frame's top prediction; returns the sign committed on this frame, if any."""
        if probability < self.min_probability:
            self.candidate = None  # an unsure frame (hand moving) restarts the hold
            return None
        if label != self.candidate:
            self.candidate, self.since = label, now
            return None
        if now - self.since < self.hold_s or (label == self.committed and label != "del"):
            return None
        self.committed, self.since = label, now
        if label == "space":
            self.text += " "
        elif label == "del":
            self.text = self.text[:-1]
        elif label != "nothing":
            self.text += label
        return label

    def progress(self, now: float) -> float:
        """How far (0..1) the current candidate is towards being committed."""
        if self.candidate is None or (self.candidate == self.committed and self.candidate != "del"):
            return 0.0
        return min(1.0, (now - self.since) / self.hold_s)

    def clear(self) -> None:
        self.text, self.candidate, self.committed, self.recent = "", None, None, []


async def classify_with_hand(backend: Backend, path: str, k: int) -> tuple[dict[str, float], dict | None]:
    """Top-k ``{label: probability}`` for an uploaded file and the hand block (None from an
    image-only model), through the serving backend: the same decoding, limits (pixels, bombs) and
    batching as ``POST /predict``, on the model replicas."""
    import gradio as gr

    (result,) = await backend.classify([await asyncio.to_thread(Path(path).read_bytes)])
    if isinstance(result, ApiError):
        raise gr.Error(result.message)
    top = {p["label"]: p["probability"] for p in top_predictions(result.probabilities, backend.info["classes"], k)}
    return top, result.hand


async def classify_file(backend: Backend, path: str, k: int) -> dict[str, float]:
    return (await classify_with_hand(backend, path, k))[0]


def overlay(path: str, hand: dict | None):
    """The photo with the hand's skeleton and box drawn on it; None (nothing shown) without a hand block."""
    if hand is None:
        return None
    from PIL import Image, ImageOps

    from asl_platform.hands.draw import draw_hand

    with Image.open(path) as image:
        return draw_hand(ImageOps.exif_transpose(image), hand)


def _model_line(info: dict) -> str:
    metrics = info.get("metrics", {})
    names = {"test_accuracy": "in-domain test accuracy", "cross_domain_accuracy": "cross-domain accuracy (other people)"}
    scores = [f"{shown} {metrics[name]:.1%}" for name, shown in names.items() if isinstance(metrics.get(name), (int, float))]
    if "cross_domain_accuracy" not in metrics:
        scores.append("no cross-domain measurement: expect less on your own photos")
    return f"Model **{info['name']}/{info['version']}** ({info['backbone']})" + (f": {', '.join(scores)}" if scores else "")


def spelling_help(settings: ServeConfig) -> str:
    return (f"Sign letters to the webcam. A letter is added once it is held for {settings.spell_hold_s:g} s; "
            "`space` adds a space, `del` deletes, `nothing` (hand down) pauses. "
            "To spell a double letter, drop your hand for a moment between the two.")


def target_markdown(practice: Practice | None) -> str:
    """What to sign now, and how."""
    if practice is None or practice.target is None:
        return "Choose an exercise and press **Start**."
    target = practice.target
    lines = [f"## Sign **{target}**"]
    if practice.mode == "word":
        done, rest = practice.word[:practice.position], practice.word[practice.position + 1:]
        lines.append(f"Spelling **{practice.word}**: {done}[**{target}**]{rest}")
    lines.append(DESCRIPTIONS.get(target, ""))
    if target in MOTION_LETTERS:
        finals = " or ".join(MOTION_LETTERS[target])
        lines.append(f"*{target} is a motion letter: a camera frame sees one moment of it, so its final handshape "
                     f"counts too (recognised as {target} or {finals}).*")
    return "\n\n".join(lines)


def score_markdown(practice: Practice | None) -> str:
    if practice is None:
        return ""
    return (f"**Score {practice.score}** · streak {practice.streak} · best streak {practice.best_streak}"
            + (f" · words spelled {practice.words_done}" if practice.mode == "word" else ""))


def feedback_markdown(result: dict, done: bool, progress: float) -> str:
    """The frame's answer for the learner: right (and how long to hold), or what it looks like and what to change."""
    seen = f"Recognised **{result['label']}** ({result['probability']:.0%})"
    if done:
        return f"Well done: **{result['target']}**! Next one."
    if result["correct"]:
        return f"{seen}: right, hold it ({progress:.0%})"
    lines = [f"{seen}: not {result['target']} yet." if result["label"] != "nothing" else "No letter seen yet."]
    lines += [f"- {hint}" for hint in result["hints"]]
    return "\n".join(lines)


def session_chart(practice: Practice | None):
    import pandas as pd

    rows = practice.history if practice is not None else []
    return pd.DataFrame(rows or [(0.0, 0)], columns=["seconds", "score"])


def build_demo(backend: Backend, settings: ServeConfig) -> gr.Blocks:
    """The demo's three tabs, wired to ``backend``."""
    import gradio as gr

    async def on_photo(image: str | None):
        if image is None:
            return None, None
        top, hand = await classify_with_hand(backend, image, k=5)
        return top, await asyncio.to_thread(overlay, image, hand)

    async def on_frame(frame: str | None, speller: Speller):
        if frame is None:
            return speller.text, "", speller, None
        top, hand = await classify_with_hand(backend, frame, k=5)
        label, probability = speller.smooth(top)
        now = time.monotonic()
        speller.follow(settings)
        committed = speller.update(label, probability, now)
        status = f"**{label}** {probability:.0%}" + (f" - added {committed}" if committed else
                                                    f" - hold {speller.progress(now):.0%}")
        if hand is not None and not hand["found"]:
            status += " (no hand found)"
        return speller.text, status, speller, await asyncio.to_thread(overlay, frame, hand)

    def on_clear() -> tuple[str, str, Speller]:
        return "", "", Speller.of(settings)

    def on_load() -> str:
        return spelling_help(settings)

    hand_aware = backend.info.get("kind") == "hand_aware"
    shapes = model_shapes(backend.info)
    practice_pool = practice_letters(backend.info["classes"])
    modes = {"Letters": "letters", "Spell a word": "word", "My weakest letters": "weakest"}

    def drawing(practice: Practice | None):
        target = practice.target if practice is not None else None
        return draw_shape(shapes[target]) if target in shapes else None

    def practice_view(practice: Practice | None, feedback: str) -> tuple:
        return (target_markdown(practice), drawing(practice), feedback, score_markdown(practice),
                practice.table() if practice is not None else [], session_chart(practice), practice)

    def on_practice_start(mode: str, word: str) -> tuple:
        practice = Practice(practice_pool, settings.spell_hold_s, settings.spell_min_probability)
        try:
            practice.start(modes[mode], time.monotonic(), word)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        return practice_view(practice, "Sign into the webcam (press Record).")

    def on_practice_skip(practice: Practice | None) -> tuple:
        if practice is not None:
            practice.skip(time.monotonic())
        return practice_view(practice, "Skipped: it is counted, and comes back in My weakest letters.")

    async def on_practice_frame(frame: str | None, practice: Practice | None) -> tuple:
        if frame is None or practice is None or practice.target is None:
            return (*practice_view(practice, "Press **Start** first." if practice is None else ""), None)
        top, hand = await classify_with_hand(backend, frame, k=3)
        label, probability = next(iter(top.items()))
        practice.hold_s, practice.min_probability = settings.spell_hold_s, settings.spell_min_probability
        target = practice.target
        result = check(label, probability, hand, target, shapes, practice.min_probability)
        now = time.monotonic()
        done = practice.update(label, probability, now)
        feedback = feedback_markdown(result, done, practice.hold_progress(now))
        return (*practice_view(practice, feedback), await asyncio.to_thread(overlay, frame, hand))

    with gr.Blocks(title="ASL alphabet recogniser", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# ASL alphabet recogniser\n" + _model_line(backend.info))
        with gr.Tab("Photo"):
            with gr.Row():
                photo = gr.Image(sources=["upload", "webcam", "clipboard"], type="filepath", image_mode=None,
                                 label="Hand sign",
                                 elem_id="photo")
                letters = gr.Label(num_top_classes=5, label="Top 5 letters", elem_id="letters")
                hand_view = gr.Image(label="Hand found", interactive=False, elem_id="hand-overlay",
                                     visible=hand_aware)
            photo.change(on_photo, inputs=photo, outputs=[letters, hand_view], api_visibility="private")
        with gr.Tab("Fingerspelling"):
            instructions = gr.Markdown(spelling_help(settings), elem_id="spell-help")
            speller = gr.State(Speller.of(settings))
            with gr.Row():
                camera = gr.Image(sources=["webcam"], streaming=True, type="filepath", image_mode=None,
                                  label="Webcam", elem_id="camera")
                with gr.Column():
                    spelled = gr.Textbox(label="Text", interactive=False, elem_id="spelled")
                    status = gr.Markdown(elem_id="spell-status")
                    clear = gr.Button("Clear", elem_id="clear")
                    frame_view = gr.Image(label="Hand found", interactive=False, elem_id="frame-overlay",
                                          visible=hand_aware)
            camera.stream(on_frame, inputs=[camera, speller], outputs=[spelled, status, speller, frame_view],
                          stream_every=0.3, time_limit=600, api_visibility="private")
            clear.click(on_clear, outputs=[spelled, status, speller], api_visibility="private")
        with gr.Tab("Practice"):
            gr.Markdown("Learn the letters: sign the target into the webcam and hold it for a moment. "
                        + ("Each letter's drawing is a typical hand from the training photos; when the answer is "
                           "wrong, the tips compare your hand's landmarks with it." if shapes else
                           "This model has no typical hand shapes (a hand-aware export has them): no drawings or tips."))
            practice = gr.State(None)
            with gr.Row():
                mode = gr.Radio(list(modes), value="Letters", label="Exercise", elem_id="practice-mode")
                word = gr.Textbox(label="Word to spell", value="CAB", elem_id="practice-word")
                start = gr.Button("Start", variant="primary", elem_id="practice-start")
                skip = gr.Button("Skip", elem_id="practice-skip")
            with gr.Row():
                with gr.Column():
                    target_view = gr.Markdown(target_markdown(None), elem_id="practice-target")
                    reference = gr.Image(label="How it looks", interactive=False, elem_id="practice-reference",
                                         visible=bool(shapes), height=240)
                practice_camera = gr.Image(sources=["webcam"], streaming=True, type="filepath", image_mode=None,
                                           label="Webcam", elem_id="practice-camera")
                with gr.Column():
                    feedback = gr.Markdown(elem_id="practice-feedback")
                    practice_overlay = gr.Image(label="Your hand", interactive=False, elem_id="practice-overlay",
                                                visible=hand_aware, height=240)
            score = gr.Markdown(elem_id="practice-score")
            with gr.Row():
                table = gr.Dataframe(headers=["letter", "shown", "done", "skipped", "mean seconds"],
                                     label="Per letter", interactive=False, elem_id="practice-table")
                chart = gr.LinePlot(session_chart(None), x="seconds", y="score", label="This session",
                                    elem_id="practice-chart")
            outputs = [target_view, reference, feedback, score, table, chart, practice]
            start.click(on_practice_start, inputs=[mode, word], outputs=outputs, api_visibility="private")
            skip.click(on_practice_skip, inputs=practice, outputs=outputs, api_visibility="private")
            practice_camera.stream(on_practice_frame, inputs=[practice_camera, practice],
                                   outputs=[*outputs, practice_overlay], stream_every=0.3, time_limit=900,
                                   show_progress="hidden", api_visibility="private")  # no dimming every frame
        # Each page load shows the hold time in force now (it changes with the ingress's user_config).
        demo.load(on_load, outputs=instructions, show_progress="hidden", api_visibility="private")
    return demo


def mount_demo(app: FastAPI, backend: Backend, settings: ServeConfig) -> FastAPI:
    """Mount the demo at /demo with a theme that needs no web fonts."""
    import gradio as gr

    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    demo = build_demo(backend, settings)
    app = gr.mount_gradio_app(app, demo, path="/demo", theme=theme,
                              max_file_size=settings.max_request_bytes, footer_links=[])
    # Gradio checks that a file named in an event was uploaded by this user (processing_utils._check_allowed)
    # only once the Blocks "has launched", which mount_gradio_app never sets: without this, a client could
    # name /etc/passwd as the image and fetch the cached copy from /demo/gradio_api/file=... (tests/serving/test_security.py).
    demo.has_launched = True
    return app
