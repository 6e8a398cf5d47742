"""The Practice tab: a target letter (or a word's letters), a picture of its hand, the learner's own hand drawn
beside it with the finger to move, what to change in words, and the round's score (the rules:
``serving.practice.Practice``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from asl_platform.config import ServeConfig
from asl_platform.serving.backends import confident
from asl_platform.serving.practice import Practice, check, model_shapes, practice_letters
from asl_platform.serving.tabs.frames import Frame, LiveHand, Profile, classify_live_hand, classify_with_hand
from asl_platform.serving.tabs.live import live_view
from asl_platform.serving.tabs.pictures import how_to_sign, learner_picture, target_picture

if TYPE_CHECKING:
    import gradio as gr

    from asl_platform.serving.backends import Backend

PRACTICE_MODES = {"Letters": "letters", "Spell a word": "word", "My weakest letters": "weakest"}
NO_ATTEMPTS = "No attempts yet: the score over the round shows here."
SCORED = "The score over the round."
DRAW_EVERY_S = 0.4  # the learner's hand is drawn again at most this often (answers come 20 times a second)


def target_markdown(practice: Practice | None, shapes: dict | None = None) -> str:
    """What to sign now, and how."""
    if practice is None or practice.target is None:
        return "Choose an exercise and press **Start**."
    target = practice.target
    lines = [f"## Sign **{target}**"]
    if practice.mode == "word":
        done, rest = practice.word[:practice.position], practice.word[practice.position + 1:]
        lines.append(f"Spelling **{practice.word}**: {done}[**{target}**]{rest}")
    return "\n\n".join(lines + how_to_sign(shapes or {}, target))


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


def session_chart(practice: Practice | None) -> dict:
    """The round's score over time, as the chart's update: empty, and saying so, before the first letter is done."""
    import gradio as gr
    import pandas as pd

    rows = practice.history if practice is not None else []
    attempted = len(rows) > 1  # the round begins with (0 s, score 0)
    frame = pd.DataFrame(rows if attempted else [], columns=["seconds", "score"]).astype({"seconds": float, "score": int})
    return gr.update(value=frame, caption=SCORED if attempted else NO_ATTEMPTS)  # numbers, even empty: a numeric axis


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


def practice_tab(backend: Backend, settings: ServeConfig, profile: gr.State, left_handed: gr.Checkbox) -> None:
    import gradio as gr

    info = backend.info
    hand_aware = info.get("kind") == "hand_aware"
    shapes = model_shapes(info)
    pool = practice_letters(info["classes"])

    def whole_view(practice: Practice | None, message: str, left: bool) -> dict:
        """Everything a new target changes."""
        return {target_view: target_markdown(practice, shapes), feedback: message, score: score_markdown(practice),
                reference: target_picture(shapes, practice.target if practice else None, left),
                table: practice.table() if practice is not None else [], chart: session_chart(practice),
                state: practice, yours: None}

    def answered(practice: Practice, frame: Frame, left: bool) -> dict:
        """One answer: the whole view when it completed the target, else the feedback and (now and then) the
        learner's hand drawn again."""
        done, message = practice_step(practice, frame, settings, info, shapes)
        if done:
            return whole_view(practice, message, left)
        update = {feedback: message, state: practice}
        now = time.monotonic()
        if frame.hand is not None and now - practice.hand_drawn_at >= DRAW_EVERY_S:
            practice.hand_drawn_at = now
            update[yours] = learner_picture(frame.hand, shapes.get(practice.target), left)
        return update

    def on_practice_start(mode: str, word: str, left: bool) -> dict:
        practice = Practice(pool, settings.spell_hold_s)
        try:
            practice.start(PRACTICE_MODES[mode], time.monotonic(), word)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        how = ("press **Start camera** (or the webcam's record button, where the page sends frames to the server)"
               if hand_aware else "press the webcam's record button")
        return whole_view(practice, f"Sign into the webcam: {how}.", left)

    def on_practice_skip(practice: Practice | None, left: bool) -> dict:
        if practice is not None:
            practice.skip(time.monotonic())
        return whole_view(practice, "Skipped: it is counted, and comes back in My weakest letters.", left)

    def on_left_handed(practice: Practice | None, left: bool) -> dict:
        return {reference: target_picture(shapes, practice.target if practice else None, left), yours: None}

    async def on_practice_frame(image: str | None, practice: Practice | None, profile: Profile | None,
                                left: bool) -> dict:
        if image is None or practice is None or practice.target is None:
            return {feedback: "Press **Start** first." if practice is None else ""}
        return answered(practice, await classify_with_hand(backend, image, k=3, profile=profile), left)

    async def on_practice_hand(message: str, practice: Practice | None, profile: Profile | None, left: bool) -> dict:
        """A hand found in the page: as ``on_practice_frame``, and only what changed is sent back (15+ a second)."""
        hand = LiveHand.read(message)
        if hand is None:
            return {}
        seen = {live_hand.seq: f"{hand.seq}"}
        if practice is None or practice.target is None:
            return seen
        frame = await classify_live_hand(backend, hand, k=3, profile=profile)
        if frame is None:  # no hand, and a model without 'nothing'
            return {**seen, feedback: "No hand seen yet."}
        return {**seen, **answered(practice, frame, left)}

    with gr.Tab("Practice"):
        gr.Markdown("Learn the letters: sign the target into the webcam and hold it for a moment. "
                    + ("The picture is a typical hand of that letter from the training photos, as the camera sees "
                       "it; your hand is drawn beside it, the finger to move in orange with an arrow to where its "
                       "tip should go." if shapes else
                       "This model has no typical hand shapes (a hand-aware export has them): no pictures or tips.")
                    + (" Calibrate first (the Calibrate tab) for answers that know your hands." if hand_aware else ""))
        state = gr.State(None)
        with gr.Row():
            mode = gr.Radio(list(PRACTICE_MODES), value="Letters", label="Exercise", elem_id="practice-mode")
            word = gr.Textbox(label="Word to spell", value="CAB", elem_id="practice-word")
            start = gr.Button("Start", variant="primary", elem_id="practice-start")
            skip = gr.Button("Skip", elem_id="practice-skip")
        with gr.Row():
            with gr.Column():
                target_view = gr.Markdown(target_markdown(None), elem_id="practice-target")
                with gr.Row():
                    reference = gr.Image(label="How it looks", interactive=False, elem_id="practice-reference",
                                         visible=bool(shapes), height=240)
                    yours = gr.Image(label="Your hand", interactive=False, elem_id="practice-yours",
                                     visible=bool(shapes) and hand_aware, height=240)
            if hand_aware:
                live_hand = live_view("practice")
            practice_camera = gr.Image(sources=["webcam"], streaming=True, type="filepath", image_mode=None,
                                       label="Webcam (frames to the server)" if hand_aware else "Webcam",
                                       elem_id="practice-camera",
                                       elem_classes=["asl-server-camera"] if hand_aware else None)
            feedback = gr.Markdown(elem_id="practice-feedback")
        score = gr.Markdown(elem_id="practice-score")
        with gr.Row():
            table = gr.Dataframe(headers=["letter", "shown", "done", "skipped", "mean seconds"],
                                 label="Per letter", interactive=False, elem_id="practice-table")
            chart = gr.LinePlot(session_chart(None)["value"], x="seconds", y="score", label="This session",
                                x_title="seconds into the round", y_title="score", x_axis_format="d",
                                y_axis_format="d", caption=NO_ATTEMPTS, elem_id="practice-chart")
        view = [target_view, reference, yours, feedback, score, table, chart, state]
        start.click(on_practice_start, inputs=[mode, word, left_handed], outputs=view, api_visibility="private")
        skip.click(on_practice_skip, inputs=[state, left_handed], outputs=view, api_visibility="private")
        left_handed.change(on_left_handed, inputs=[state, left_handed], outputs=[reference, yours],
                           api_visibility="private")
        practice_camera.stream(on_practice_frame, inputs=[practice_camera, state, profile, left_handed],
                               outputs=view, stream_every=0.3, time_limit=900,
                               show_progress="hidden", api_visibility="private")  # no dimming every frame
        if hand_aware:
            live_hand.click(on_practice_hand, inputs=[live_hand.hand, state, profile, left_handed],
                            outputs=[*view, live_hand.seq], js=live_hand.js,
                            trigger_mode="always_last", show_progress="hidden", api_visibility="private")
