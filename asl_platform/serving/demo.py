"""Gradio demo, mounted at ``/demo`` by the HTTP app: a photo (upload or webcam snapshot) -> top-5
letters, a fingerspelling mode where a live webcam stream builds text letter by letter, a
practice mode that teaches the letters (``practice``), and, for a hand-aware model, a calibration
to the learner's own hands (``serving.calibration``) that every tab then answers with. The sessions' rules
(fingerspelling, the calibration in progress) are ``serving.sessions``; here they are wired to the page. An answer
that is not confident (the model card's threshold) never commits a letter or passes a practice
target: the screen says "not sure" instead.

It classifies through the same backend as ``/predict`` (so through ``@serve.batch`` on Serve), and
it loads nothing from the internet: system fonts instead of Google Fonts, no analytics.

The fingerspelling thresholds (``SPELLING_KEYS``) are read from ``settings`` each time they are used,
so the ingress's ``reconfigure`` (Serve ``user_config``) changes them for every open session at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asl_platform.config import ServeConfig
from asl_platform.hands.shapes import DESCRIPTIONS, MOTION_LETTERS, draw_shape
from asl_platform.model.calibration import Calibration
from asl_platform.serving.backends import Prediction, confident
from asl_platform.serving.calibration import build_profile, checked_calibration
from asl_platform.serving.landmarks import hand_block, landmark_row, read_hand
from asl_platform.serving.practice import NOT_SURE, Practice, check, model_shapes, practice_letters
from asl_platform.serving.sessions import CALIBRATION_SHOTS, Calibrating, Speller
from asl_platform.serving.protocol import ApiError, top_predictions

if TYPE_CHECKING:
    import gradio as gr
    from fastapi import FastAPI

    from asl_platform.serving.backends import Backend

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline demo

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Consolas", "Liberation Mono", "monospace"]


@dataclass
class Frame:
    """One classified image: the top-k ``{label: probability}`` and the prediction itself."""

    top: dict[str, float]
    prediction: Prediction

    @property
    def hand(self) -> dict | None:
        """The hand block (None from an image-only model)."""
        return self.prediction.hand

    @property
    def calibrated(self) -> bool:
        """Whether the person's calibration answered."""
        return self.prediction.calibrated


async def classify_frame(backend: Backend, data: bytes, k: int, profile: Profile | None = None) -> Frame:
    """An image through the serving backend (the same decoding, limits and batching as ``POST /predict``,
    on the model replicas), with the session's calibration profile when there is one."""
    import gradio as gr

    (result,) = await backend.classify([data], profile.calibration if profile else None)
    if isinstance(result, ApiError):
        raise gr.Error(result.message)
    top = {p["label"]: p["probability"] for p in top_predictions(result.probabilities, backend.info["classes"], k)}
    return Frame(top, result)


async def classify_with_hand(backend: Backend, path: str, k: int, profile: Profile | None = None) -> Frame:
    return await classify_frame(backend, await asyncio.to_thread(Path(path).read_bytes), k, profile)


@dataclass
class LiveHand:
    """One frame's hand as the page found it (``static/live.js``): its number, landmarks (None: no hand)."""

    seq: int
    landmarks: object  # np.ndarray (21, 3) in pixels, or None
    handedness: str

    @classmethod
    def read(cls, message: str | None) -> LiveHand | None:
        """The page's JSON, checked like POST /v1/landmarks' body; None for anything else (never trusted)."""
        try:
            document = json.loads(message or "")
            seq = document.pop("seq")
            points, handedness = read_hand(document)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError, ApiError):
            return None
        return cls(seq, points, handedness) if isinstance(seq, int) else None


async def classify_live_hand(backend: Backend, hand: LiveHand, k: int, profile: Profile | None = None) -> Frame | None:
    """A hand found in the page through the landmark model (the path of POST /v1/landmarks, batched on the model
    replicas); no hand is ``nothing`` (None for a model without that class: nothing to answer)."""
    import gradio as gr

    classes = backend.info["classes"]
    if hand.landmarks is None:
        if "nothing" not in classes:
            return None
        probabilities = np.zeros(len(classes), np.float32)
        probabilities[classes.index("nothing")] = 1.0
        result = Prediction(probabilities, source="live")
    else:
        (result,) = await backend.classify_landmarks([landmark_row(hand.landmarks, hand.handedness)],
                                                     profile.calibration if profile else None)
        if isinstance(result, ApiError):
            raise gr.Error(result.message)
    top = {p["label"]: p["probability"] for p in top_predictions(result.probabilities, classes, k)}
    return Frame(top, result._replace(hand=hand_block(hand.landmarks, hand.handedness)))


@dataclass
class Profile:
    """The session's calibration profile: its JSON (what is downloaded and uploaded) and, checked against
    the model, what the model reads. It lives in the page's session, in memory: never written to disk."""

    document: dict
    calibration: Calibration
    report: str = ""

    @classmethod
    def of(cls, document: dict, info: dict, report: str = "") -> Profile:
        return cls(document, checked_calibration(document, info), report)


def overlay(path: str, hand: dict | None):
    """The photo with the hand's skeleton and box drawn on it; None (nothing shown) without a hand block."""
    if hand is None:
        return None
    from PIL import Image, ImageOps

    from asl_platform.hands.draw import draw_hand

    with Image.open(path) as image:
        return draw_hand(ImageOps.exif_transpose(image), hand)


def _model_line(info: dict) -> str:
    """The model and the accuracy of what answers each tab: the whole model on photos, the landmark model on a hand
    found in the live tabs (fingerspelling, practice, calibration)."""
    metrics = info.get("metrics", {})
    def share(name: str) -> str | None:
        value = metrics.get(name)
        return f"{value:.1%}" if isinstance(value, (int, float)) and value == value else None

    scores = [f"in-domain test accuracy {share('test_accuracy')}"] if share("test_accuracy") else []
    if share("cross_domain_accuracy"):
        scores.append(f"on other people's photos {share('cross_domain_accuracy')}")
        if share("cross_domain_accuracy_live"):
            scores.append(f"live tabs (the landmark model, on a hand found) {share('cross_domain_accuracy_live')}")
    else:
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


def feedback_markdown(result: dict, done: bool, progress: float, calibrated: bool = False) -> str:
    """The frame's answer for the learner: right (and how long to hold), or what it looks like and what to change."""
    seen = f"Recognised **{result['label']}** ({result['probability']:.0%}{', your calibration' if calibrated else ''})"
    if done:
        return f"Well done: **{result['target']}**! Next one." + (" (Answered from your calibration.)" if calibrated else "")
    if result["correct"]:
        return f"{seen}: right, hold it ({progress:.0%})"
    if not result["confident"]:
        lines = [f"Maybe **{result['label']}** ({result['probability']:.0%}): too unsure to count."]
    else:
        lines = [f"{seen}: not {result['target']} yet." if result["label"] != "nothing" else "No letter seen yet."]
    lines += [f"- {hint}" for hint in result["hints"]]
    return "\n".join(lines)


NO_ATTEMPTS = "No attempts yet: the score over the round shows here."
SCORED = "The score over the round."


def session_chart(practice: Practice | None) -> dict:
    """The round's score over time, as the chart's update: empty, and saying so, before the first letter is done."""
    import gradio as gr
    import pandas as pd

    rows = practice.history if practice is not None else []
    attempted = len(rows) > 1  # the round begins with (0 s, score 0)
    frame = pd.DataFrame(rows if attempted else [], columns=["seconds", "score"]).astype({"seconds": float, "score": int})
    return gr.update(value=frame, caption=SCORED if attempted else NO_ATTEMPTS)  # numbers, even empty: a numeric axis


def calibration_target(session: Calibrating | None) -> str:
    if session is None:
        return ("Calibrate the recogniser to **your** hands: press **Start**, start the camera, and sign each letter "
                "as shown. Hold it still: three frames are taken, then lower your hand and sign it once more (a check "
                "that measures the calibration). Skip a letter you do not know yet. About two minutes in all.")
    if session.target is None:
        return "All letters done: press **Finish**."
    target, take = session.target, session.take(session.target)
    lines = [f"## Sign **{target}**", DESCRIPTIONS.get(target, "")]
    if take.flagged is not None:
        lines.append(f"**This looks like {take.flagged[2]}** to the model, not {target}. Sign {target} again, or press "
                     f"**Keep it** if this is how you sign {target}.")
    return "\n\n".join(line for line in lines if line)


CALIBRATION_STEPS = {
    "ready": "get ready…", "hold": "hold it still…", "shot": "frame taken, keep holding…",
    "flagged": "not taken: see above", "lower": "now lower your hand, then sign it once more for the check",
    "check": "checked",
}


def calibration_progress(session: Calibrating | None) -> str:
    if session is None:
        return ""
    target = session.target
    lines = []
    if target:
        phase = ("check: sign it once more" if session.phase == "check" else
                 CALIBRATION_STEPS["lower"] if session.phase == "lower" else
                 f"{session.shots(target)}/{CALIBRATION_SHOTS} frames")
        step = CALIBRATION_STEPS.get(session.last, "") if session.last not in ("lower", "check") else ""
        lines.append(f"Letter {session.position + 1} of {len(session.letters)} · **{target}**: {phase}"
                     + (f" · {step}" if step else ""))
    done = [f"{letter} {len(take.shots)}" + (" ✓" if take.check else "") for letter, take in session.takes.items()
            if take.shots and letter != target]
    skipped = [letter for letter, take in session.takes.items() if take.skipped]
    if done:
        lines.append("Done: " + ", ".join(done) + " (frames; ✓ checked)")
    if skipped:
        lines.append("Skipped: " + ", ".join(skipped))
    return "\n\n".join(lines)


def calibration_report(result: dict) -> str:
    """What the calibration gave: adopted or not and why, the before/after on the check holds, and which
    letters are used (and why not)."""
    letters = result["letters"]
    if result["profile"] is None:
        lines = [f"**Not calibrated**: {result['why']}. The model alone answers, as before."]
    else:
        used = [letter for letter, record in letters.items() if record["used"]]
        lines = [f"**Calibrated** to your hands: {len(used)} letter(s) ({', '.join(used)}). It stays in this page's "
                 "session (never stored on the server); download it to use it again."]
    held = result["held_out"]
    if held:
        where = "your check of each letter" if held["on"] == "check" else "your frames, each kept out in turn"
        lines.append(f"On {where} ({held['images']} frames): **{held['accuracy_before']:.0%}** right by the model "
                     f"alone, **{held['accuracy_after']:.0%}** with your calibration.")
    dropped = [f"{letter}: {record['why']}" for letter, record in letters.items() if not record["used"] and record["shots"]]
    if dropped:
        lines.append("Not used (the model alone answers them):\n" + "\n".join(f"- {line}" for line in dropped))
    return "\n\n".join(lines)


def build_demo(backend: Backend, settings: ServeConfig) -> gr.Blocks:
    """The demo's tabs, wired to ``backend``: one function per tab, sharing the session's calibration profile."""
    import gradio as gr

    info = backend.info
    with gr.Blocks(title="ASL alphabet recogniser", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# ASL alphabet recogniser\n" + _model_line(info))
        profile = gr.State(None)  # the calibration profile of this page's session, used by every tab
        photo_tab(backend, profile)
        if info.get("kind") == "hand_aware":
            calibrate_tab(backend, profile)
        instructions = spelling_tab(backend, settings, profile)
        practice_tab(backend, settings, profile)

        def on_load() -> str:
            return spelling_help(settings)

        # Each page load shows the hold time in force now (it changes with the ingress's user_config).
        demo.load(on_load, outputs=instructions, show_progress="hidden", api_visibility="private")
    return demo


def _drawing(shapes: dict, target: str | None):
    return draw_shape(shapes[target]) if target in shapes else None


def photo_tab(backend: Backend, profile: gr.State) -> None:
    """A photo (upload, webcam snapshot, clipboard) -> the top 5 letters and the hand found."""
    import gradio as gr

    async def on_photo(image: str | None, profile: Profile | None):
        if image is None:
            return None, None
        frame = await classify_with_hand(backend, image, k=5, profile=profile)
        return frame.top, await asyncio.to_thread(overlay, image, frame.hand)

    with gr.Tab("Photo"):
        with gr.Row():
            photo = gr.Image(sources=["upload", "webcam", "clipboard"], type="filepath", image_mode=None,
                             label="Hand sign",
                             elem_id="photo")
            letters = gr.Label(num_top_classes=5, label="Top 5 letters", elem_id="letters")
            hand_view = gr.Image(label="Hand found", interactive=False, elem_id="hand-overlay",
                                 visible=backend.info.get("kind") == "hand_aware")
        photo.change(on_photo, inputs=[photo, profile], outputs=[letters, hand_view], api_visibility="private")


def calibrate_tab(backend: Backend, profile: gr.State) -> None:
    """Calibration to the learner's hands (a hand-aware model): each letter in turn from the webcam, then
    the profile, which can be downloaded, loaded again, or forgotten."""
    import gradio as gr

    info = backend.info
    shapes = model_shapes(info)
    pool = practice_letters(info["classes"])

    def calibration_view(session: Calibrating | None) -> tuple:
        return (calibration_target(session), _drawing(shapes, session.target if session else None),
                calibration_progress(session), session)

    def on_calibrate_start() -> tuple:
        return calibration_view(Calibrating(pool, info, shown_at=time.monotonic()))

    def on_calibrate_skip(session: Calibrating | None) -> tuple:
        if session is not None:
            session.skip(time.monotonic())
        return calibration_view(session)

    def on_calibrate_redo(session: Calibrating | None, letter: str | None) -> tuple:
        if session is not None:
            session.redo(time.monotonic(), letter or None)
        return calibration_view(session)

    def on_calibrate_keep(session: Calibrating | None) -> tuple:
        if session is not None:
            session.keep(time.monotonic())
        return calibration_view(session)

    async def finish(session: Calibrating | None, profile: Profile | None) -> tuple:
        """The profile from the session so far (the session stays: the learner can go on, or redo letters)."""
        labelled, predictions, checks = session.labelled() if session is not None else ([], [], [])
        if not labelled:
            return (*calibration_view(session), profile, "No frames of a held hand yet: press **Start**, then start "
                    "the camera and hold each letter still.", profile.document if profile else None)
        result = await build_profile(backend, labelled, predictions, checks)
        report = calibration_report(result)
        new = Profile.of(result["profile"], info, report) if result["profile"] else profile
        return (*calibration_view(session), new, report, new.document if new else None)

    async def on_calibrate_frame(image: str | None, session: Calibrating | None, profile: Profile | None) -> tuple:
        if image is None or session is None or session.target is None:
            # gr.skip(), not the profile it was given: a frame in flight while a profile is loaded must not undo it
            return (*calibration_view(session), gr.skip(), gr.skip(), gr.skip(), None)
        data = await asyncio.to_thread(Path(image).read_bytes)
        frame = await classify_frame(backend, data, k=1)  # the model alone: a shot records the hand as it is
        session.offer(data, frame.prediction, time.monotonic())
        shown = await asyncio.to_thread(overlay, image, frame.hand)
        if session.target is None:  # the last letter is done
            return (*await finish(session, profile), shown)
        return (*calibration_view(session), gr.skip(), gr.skip(), gr.skip(), shown)

    async def on_calibrate_hand(message: str, session: Calibrating | None, profile: Profile | None) -> tuple:
        """A hand found in the page (the live view): its landmarks are the shot, no image."""
        hand = LiveHand.read(message)
        if hand is None or session is None or session.target is None:
            return (*calibration_view(session), gr.skip(), gr.skip(), gr.skip(), gr.skip())
        frame = await classify_live_hand(backend, hand, k=1)  # the model alone, as for a frame
        session.offer(None, frame.prediction if frame is not None else Prediction(np.zeros(len(info["classes"])),
                                                                                 {"found": False}), time.monotonic())
        if session.target is None:
            return (*await finish(session, profile), f"{hand.seq}")
        return (*calibration_view(session), gr.skip(), gr.skip(), gr.skip(), f"{hand.seq}")

    def on_profile_upload(path: str | None) -> tuple:
        if path is None:
            return None, "", None
        try:
            document = json.loads(Path(path).read_text())
            profile = Profile.of(document, info, "Profile loaded from your file.")
        except (OSError, ValueError, RecursionError) as exc:  # unreadable, not JSON, nested too deeply
            raise gr.Error(f"not a calibration profile: {exc}") from None
        except ApiError as exc:
            raise gr.Error(exc.message) from None
        finally:
            Path(path).unlink(missing_ok=True)  # the upload's copy in Gradio's cache: nothing kept on the server
        return profile, profile.report, profile.document

    def on_profile_forget() -> tuple:
        return None, "Calibration removed: the model alone answers again.", None

    with gr.Tab("Calibrate"):
        calibration = gr.State(None)
        with gr.Row():
            calibrate_start = gr.Button("Start", variant="primary", elem_id="calibrate-start")
            calibrate_keep = gr.Button("Keep it", elem_id="calibrate-keep")
            calibrate_skip = gr.Button("Skip letter", elem_id="calibrate-skip")
            calibrate_letter = gr.Dropdown(pool, value=None, label="Letter to redo (none: this one)",
                                           elem_id="calibrate-letter")
            calibrate_redo = gr.Button("Redo letter", elem_id="calibrate-redo")
            calibrate_finish = gr.Button("Finish", elem_id="calibrate-finish")
        with gr.Row():
            with gr.Column():
                calibrate_target = gr.Markdown(calibration_target(None), elem_id="calibrate-target")
                calibrate_reference = gr.Image(label="How it looks", interactive=False, height=200,
                                               elem_id="calibrate-reference", visible=bool(shapes))
                calibrate_progress = gr.Markdown(elem_id="calibrate-progress")
            live_hand = live_view("calibrate")
            calibrate_camera = gr.Image(sources=["webcam"], streaming=True, type="filepath", image_mode=None,
                                        label="Webcam (frames to the server)", elem_id="calibrate-camera",
                                        elem_classes=["asl-server-camera"])
            calibrate_overlay = gr.Image(label="Your hand", interactive=False, height=240,
                                         elem_id="calibrate-overlay", elem_classes=["asl-server-camera"])
        calibrate_report = gr.Markdown(elem_id="calibrate-report")
        profile_json = gr.JSON(visible=False)
        with gr.Row():
            download = gr.Button("Download my profile", elem_id="profile-download")
            upload = gr.UploadButton("Load a profile", file_types=[".json"], elem_id="profile-upload")
            forget = gr.Button("Forget my profile", elem_id="profile-forget")
        view = [calibrate_target, calibrate_reference, calibrate_progress, calibration]
        calibrate_start.click(on_calibrate_start, outputs=view, api_visibility="private")
        calibrate_skip.click(on_calibrate_skip, inputs=calibration, outputs=view, api_visibility="private")
        calibrate_keep.click(on_calibrate_keep, inputs=calibration, outputs=view, api_visibility="private")
        calibrate_redo.click(on_calibrate_redo, inputs=[calibration, calibrate_letter], outputs=view,
                             api_visibility="private")
        calibrate_finish.click(finish, inputs=[calibration, profile],
                               outputs=[*view, profile, calibrate_report, profile_json], api_visibility="private")
        calibrate_camera.stream(on_calibrate_frame, inputs=[calibrate_camera, calibration, profile],
                                outputs=[*view, profile, calibrate_report, profile_json, calibrate_overlay],
                                stream_every=0.3, time_limit=600, show_progress="hidden",
                                api_visibility="private")
        live_hand.click(on_calibrate_hand, inputs=[live_hand.hand, calibration, profile],
                        outputs=[*view, profile, calibrate_report, profile_json, live_hand.seq], js=live_hand.js,
                        trigger_mode="always_last", show_progress="hidden", api_visibility="private")
        # Made in the browser from the page's copy: the server writes no file for a download.
        download.click(None, inputs=profile_json, js=DOWNLOAD_JS, api_visibility="private")
        # The live views send the page's copy with each hand to POST /v1/landmarks (static/live.js).
        profile_json.change(None, inputs=profile_json, js=PROFILE_TO_PAGE_JS, api_visibility="private")
        upload.upload(on_profile_upload, inputs=upload, outputs=[profile, calibrate_report, profile_json],
                      api_visibility="private")
        forget.click(on_profile_forget, outputs=[profile, calibrate_report, profile_json],
                     api_visibility="private")


def spell_step(speller: Speller, frame: Frame, settings: ServeConfig, info: dict) -> str:
    """One answer into the text being spelled (a letter is added once held, and only when the answer is
    confident); returns the status line that says what happened."""
    label, probability = speller.smooth(frame.top)
    now = time.monotonic()
    speller.follow(settings)
    sure = confident(info, frame.prediction, probability)
    committed = speller.update(label, now, sure)
    status = f"**{label}** {probability:.0%}" + (" (your calibration)" if frame.calibrated else "")
    status += (f" - added {committed}" if committed else f" - hold {speller.progress(now):.0%}" if sure
               else f" - {NOT_SURE}")
    if frame.hand is not None and not frame.hand["found"]:
        status += " (no hand found)"
    return status


def spelling_tab(backend: Backend, settings: ServeConfig, profile: gr.State) -> gr.Markdown:
    """Fingerspelling: the webcam stream builds text letter by letter. Returns the instructions, which
    each page load refreshes (the hold time changes with the ingress's user_config)."""
    import gradio as gr

    info = backend.info

    async def on_frame(image: str | None, speller: Speller, profile: Profile | None):
        if image is None:
            return speller.text, "", speller, None
        frame = await classify_with_hand(backend, image, k=5, profile=profile)
        status = spell_step(speller, frame, settings, info)
        return speller.text, status, speller, await asyncio.to_thread(overlay, image, frame.hand)

    async def on_hand(message: str, speller: Speller, profile: Profile | None):
        hand = LiveHand.read(message)
        if hand is None:
            return gr.skip(), gr.skip(), speller, gr.skip()
        frame = await classify_live_hand(backend, hand, k=5, profile=profile)
        if frame is None:  # no hand, and a model without 'nothing'
            return speller.text, "(no hand found)", speller, f"{hand.seq}"
        return speller.text, spell_step(speller, frame, settings, info), speller, f"{hand.seq}"

    def on_clear(speller: Speller) -> tuple[str, str, Speller]:
        # In place, not a new Speller: a frame answered meanwhile returns this same (now empty) speller as
        # its state, where a new one would be overwritten by the older speller that frame was given.
        speller.clear()
        speller.follow(settings)
        return "", "", speller

    hand_aware = info.get("kind") == "hand_aware"
    with gr.Tab("Fingerspelling"):
        instructions = gr.Markdown(spelling_help(settings), elem_id="spell-help")
        speller = gr.State(Speller.of(settings))
        with gr.Row():
            if hand_aware:
                live_hand = live_view("spell")
            camera = gr.Image(sources=["webcam"], streaming=True, type="filepath", image_mode=None,
                              label="Webcam (frames to the server)" if hand_aware else "Webcam", elem_id="camera",
                              elem_classes=["asl-server-camera"] if hand_aware else None)
            with gr.Column():
                spelled = gr.Textbox(label="Text", interactive=False, elem_id="spelled")
                status = gr.Markdown(elem_id="spell-status")
                clear = gr.Button("Clear", elem_id="clear")
                frame_view = gr.Image(label="Hand found", interactive=False, elem_id="frame-overlay",
                                      visible=info.get("kind") == "hand_aware")
        camera.stream(on_frame, inputs=[camera, speller, profile], outputs=[spelled, status, speller, frame_view],
                      stream_every=0.3, time_limit=600, api_visibility="private")
        if hand_aware:  # the hand found in the page; while one is answered, only the latest waits
            live_hand.click(on_hand, inputs=[live_hand.hand, speller, profile],
                            outputs=[spelled, status, speller, live_hand.seq], js=live_hand.js,
                            trigger_mode="always_last", show_progress="hidden", api_visibility="private")
        clear.click(on_clear, inputs=speller, outputs=[spelled, status, speller], api_visibility="private")
    return instructions


def practice_step(practice: Practice, frame: Frame, settings: ServeConfig, info: dict, shapes: dict) -> tuple[bool, str]:
    """One answer against the practice target: whether the target was held long enough (a new one comes),
    and what to tell the learner (right, not sure, or what to change in the hand)."""
    label, probability = next(iter(frame.top.items()))
    practice.hold_s = settings.spell_hold_s
    sure = confident(info, frame.prediction)
    result = check(label, probability, sure, frame.hand, practice.target, shapes)
    now = time.monotonic()
    done = practice.update(label, now, sure)
    return done, feedback_markdown(result, done, practice.hold_progress(now), frame.calibrated)


PRACTICE_MODES = {"Letters": "letters", "Spell a word": "word", "My weakest letters": "weakest"}


def practice_tab(backend: Backend, settings: ServeConfig, profile: gr.State) -> None:
    """Practice: a target letter (or a word's letters), its drawing, and what to change, from the webcam."""
    import gradio as gr

    info = backend.info
    hand_aware = info.get("kind") == "hand_aware"
    shapes = model_shapes(info)
    pool = practice_letters(info["classes"])

    def practice_view(practice: Practice | None, feedback: str) -> tuple:
        return (target_markdown(practice), _drawing(shapes, practice.target if practice else None), feedback,
                score_markdown(practice), practice.table() if practice is not None else [], session_chart(practice),
                practice)

    def on_practice_start(mode: str, word: str) -> tuple:
        practice = Practice(pool, settings.spell_hold_s)
        try:
            practice.start(PRACTICE_MODES[mode], time.monotonic(), word)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        return practice_view(practice, "Sign into the webcam: press **Start camera** (or **Record**, where the page "
                                       "sends frames to the server).")

    def on_practice_skip(practice: Practice | None) -> tuple:
        if practice is not None:
            practice.skip(time.monotonic())
        return practice_view(practice, "Skipped: it is counted, and comes back in My weakest letters.")

    async def on_practice_frame(image: str | None, practice: Practice | None, profile: Profile | None) -> tuple:
        if image is None or practice is None or practice.target is None:
            return (*practice_view(practice, "Press **Start** first." if practice is None else ""), None)
        frame = await classify_with_hand(backend, image, k=3, profile=profile)
        done, feedback = practice_step(practice, frame, settings, info, shapes)
        return (*practice_view(practice, feedback), await asyncio.to_thread(overlay, image, frame.hand))

    async def on_practice_hand(message: str, practice: Practice | None, profile: Profile | None) -> tuple:
        """A hand found in the page: as ``on_practice_frame``, and only what changed is sent back (15+ a second)."""
        hand = LiveHand.read(message)
        if hand is None or practice is None or practice.target is None:
            return (*[gr.skip()] * 7, f"{hand.seq}" if hand else gr.skip())
        frame = await classify_live_hand(backend, hand, k=3, profile=profile)
        if frame is None:
            return (*[gr.skip()] * 2, "No hand seen yet.", *[gr.skip()] * 4, f"{hand.seq}")
        done, feedback = practice_step(practice, frame, settings, info, shapes)
        if done:  # a new target: the whole view
            return (*practice_view(practice, feedback), f"{hand.seq}")
        return (gr.skip(), gr.skip(), feedback, gr.skip(), gr.skip(), gr.skip(), practice, f"{hand.seq}")

    with gr.Tab("Practice"):
        gr.Markdown("Learn the letters: sign the target into the webcam and hold it for a moment. "
                    + ("Each letter's drawing is a typical hand from the training photos; when the answer is "
                       "wrong, the tips compare your hand's landmarks with it." if shapes else
                       "This model has no typical hand shapes (a hand-aware export has them): no drawings or tips.")
                    + (" Calibrate first (the Calibrate tab) for answers that know your hands." if hand_aware else ""))
        practice = gr.State(None)
        with gr.Row():
            mode = gr.Radio(list(PRACTICE_MODES), value="Letters", label="Exercise", elem_id="practice-mode")
            word = gr.Textbox(label="Word to spell", value="CAB", elem_id="practice-word")
            start = gr.Button("Start", variant="primary", elem_id="practice-start")
            skip = gr.Button("Skip", elem_id="practice-skip")
        with gr.Row():
            with gr.Column():
                target_view = gr.Markdown(target_markdown(None), elem_id="practice-target")
                reference = gr.Image(label="How it looks", interactive=False, elem_id="practice-reference",
                                     visible=bool(shapes), height=240)
            if hand_aware:
                live_hand = live_view("practice")
            practice_camera = gr.Image(sources=["webcam"], streaming=True, type="filepath", image_mode=None,
                                       label="Webcam (frames to the server)" if hand_aware else "Webcam",
                                       elem_id="practice-camera",
                                       elem_classes=["asl-server-camera"] if hand_aware else None)
            with gr.Column():
                feedback = gr.Markdown(elem_id="practice-feedback")
                practice_overlay = gr.Image(label="Your hand", interactive=False, elem_id="practice-overlay",
                                            visible=hand_aware, height=240)
        score = gr.Markdown(elem_id="practice-score")
        with gr.Row():
            table = gr.Dataframe(headers=["letter", "shown", "done", "skipped", "mean seconds"],
                                 label="Per letter", interactive=False, elem_id="practice-table")
            chart = gr.LinePlot(session_chart(None)["value"], x="seconds", y="score", label="This session",
                                x_title="seconds into the round", y_title="score", x_axis_format="d",
                                y_axis_format="d", caption=NO_ATTEMPTS, elem_id="practice-chart")
        outputs = [target_view, reference, feedback, score, table, chart, practice]
        start.click(on_practice_start, inputs=[mode, word], outputs=outputs, api_visibility="private")
        skip.click(on_practice_skip, inputs=practice, outputs=outputs, api_visibility="private")
        practice_camera.stream(on_practice_frame, inputs=[practice_camera, practice, profile],
                               outputs=[*outputs, practice_overlay], stream_every=0.3, time_limit=900,
                               show_progress="hidden", api_visibility="private")  # no dimming every frame
        if hand_aware:
            live_hand.click(on_practice_hand, inputs=[live_hand.hand, practice, profile],
                            outputs=[*outputs, live_hand.seq], js=live_hand.js,
                            trigger_mode="always_last", show_progress="hidden", api_visibility="private")


@dataclass
class LiveHandle:
    """The hidden components a live view talks through: the page clicks ``button`` (``#<name>-live-tick``)
    for each frame's hand, which ``js`` hands to the event as ``hand``'s value; ``seq`` (``#<name>-live-seq``)
    shows the number of the hand answered (the page times frame -> answer with it)."""

    button: gr.Button
    hand: gr.Textbox
    seq: gr.Markdown
    js: str

    def click(self, fn, **kwargs) -> None:
        self.button.click(fn, **kwargs)


def live_view(name: str) -> LiveHandle:
    """A live view whose hand landmarks are found in the page (``static/live.js``): the webcam, the hand
    drawn over it, what runs where."""
    import gradio as gr

    with gr.Column(elem_classes=["asl-live-column"]):
        gr.HTML(LIVE_VIEW.format(name=name), js_on_load=None, elem_id=f"{name}-live")
        hand = gr.Textbox(visible="hidden", elem_id=f"{name}-live-hand")
        seq = gr.Markdown(visible="hidden", elem_id=f"{name}-live-seq")
        button = gr.Button(visible="hidden", elem_id=f"{name}-live-tick")
    return LiveHandle(button, hand, seq, f"(hand, ...rest) => [window.aslLive.take({name!r}), ...rest]")


LIVE_VIEW = """<div class="asl-live" data-live="{name}">
  <div class="asl-live-view">
    <div class="asl-live-frame"><video playsinline muted></video><canvas></canvas></div>
    <button class="asl-live-start lg primary" type="button" id="{name}-live-start">Start camera</button>
    <button class="asl-live-stop lg secondary" type="button">Stop</button>
    <p class="asl-live-answer" id="{name}-live-answer" aria-live="polite"></p>
    <p class="asl-live-status" id="{name}-live-status">Hand landmarks are found in this page: no video leaves your device.</p>
  </div>
  <p class="asl-live-fallback-note" id="{name}-live-fallback">In-page hand landmarks are not available here
    (<span class="asl-live-reason"></span>): the webcam below sends its frames to the server instead.</p>
</div>"""

LIVE_CSS = """
.asl-live-frame { position: relative; max-width: 480px; }
.asl-live-frame video { width: 100%; display: block; background: #222; }
.asl-live-frame canvas { position: absolute; inset: 0; width: 100%; height: 100%; pointer-events: none; }
.asl-live-answer { font-size: 1.6em; font-weight: 600; min-height: 1.4em; margin: 0.3em 0; }
.asl-live-fallback-note { display: none; }
body.asl-live-server .asl-live-fallback-note { display: block; }
body.asl-live-server .asl-live-view { display: none; }
body.asl-live-browser .asl-server-camera { display: none !important; }
"""


PROFILE_TO_PAGE_JS = "(profile) => { if (window.aslLive) window.aslLive.setProfile(profile); return []; }"

# The profile's JSON becomes a file download in the browser itself (nothing is written on the server).
DOWNLOAD_JS = """(profile) => {
  if (!profile) { alert("No profile yet: calibrate first."); return; }
  const blob = new Blob([JSON.stringify(profile)], {type: "application/json"});
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "asl-calibration-profile.json";
  document.body.appendChild(link); link.click(); link.remove();
}"""


def mount_demo(app: FastAPI, backend: Backend, settings: ServeConfig) -> FastAPI:
    """Mount the demo at /demo with a theme that needs no web fonts."""
    import gradio as gr

    from asl_platform.serving.browser_hands import add_browser_routes, ensure_assets

    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    demo = build_demo(backend, settings)
    live = backend.info.get("kind") == "hand_aware"  # the live modes answer from landmarks: a landmark model's
    if live:
        ensure_assets()  # fetched once; without them the page falls back to the server's frame path
        add_browser_routes(app)
    app = gr.mount_gradio_app(app, demo, path="/demo", theme=theme,
                              max_file_size=settings.max_request_bytes, footer_links=[],
                              css=LIVE_CSS if live else None,
                              head='<script src="../hands/live.js"></script>' if live else None)
    # Gradio checks that a file named in an event was uploaded by this user (processing_utils._check_allowed)
    # only once the Blocks "has launched", which mount_gradio_app never sets: without this, a client could
    # name /etc/passwd as the image and fetch the cached copy from /demo/gradio_api/file=... (tests/serving/test_security.py).
    demo.has_launched = True
    return app
