"""asl_platform.serving.demo: the fingerspelling rules and the calibration session (pure logic), and the demo's wiring
to a real model."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np

from helpers.models import colour_image
from helpers.serving import png_header_only, shown
from PIL import Image

from asl_platform.config import ServeConfig
from asl_platform.serving.backends import LocalBackend
from asl_platform.serving.demo import build_demo
from asl_platform.serving.tabs.frames import classify_with_hand
from asl_platform.serving.sessions import Speller


def feed(speller: Speller, frames: list[tuple[str, float]], step: float = 0.25, threshold: float = 0.6) -> list[str | None]:
    """Frames (label, probability), confident at ``threshold`` (what ``serving.backends.confident`` decides)."""
    return [speller.update(label, i * step, probability >= threshold) for i, (label, probability) in enumerate(frames)]


def test_letter_is_committed_once_after_holding():
    speller = Speller(hold_s=1.0)
    committed = feed(speller, [("A", 0.9)] * 10)
    assert committed.count("A") == 1 and committed.index("A") == 4  # 1.0 s after the first frame
    assert speller.text == "A"


def test_short_glimpses_and_unsure_frames_do_not_commit():
    speller = Speller(hold_s=1.0)
    feed(speller, [("B", 0.9), ("B", 0.9), ("C", 0.9), ("B", 0.9), ("B", 0.5), ("B", 0.9), ("B", 0.9)])
    assert speller.text == ""


def test_double_letter_needs_a_pause_and_specials_work():
    speller = Speller(hold_s=0.5)
    frames = ([("L", 0.9)] * 4 + [("nothing", 0.9)] * 4 + [("L", 0.9)] * 4 + [("space", 0.8)] * 4
              + [("O", 0.9)] * 4 + [("del", 0.9)] * 3 + [("K", 0.95)] * 3)
    feed(speller, frames)
    assert speller.text == "LL K"


def test_del_repeats_while_held_and_clear_resets():
    speller = Speller(hold_s=0.5, text="ABCD")
    feed(speller, [("del", 0.9)] * 7)  # commits at 0.5, 1.0, 1.5 s
    assert speller.text == "A"
    speller.clear()
    assert (speller.text, speller.candidate, speller.committed) == ("", None, None)
    assert speller.progress(now=0.0) == 0.0


def test_progress_grows_towards_a_commit():
    speller = Speller(hold_s=1.0)
    speller.update("Y", 0.0, True)
    assert speller.progress(now=0.5) == 0.5 and speller.progress(now=3.0) == 1.0


def test_demo_classifies_through_the_backend_with_the_apis_rules(colour_model, tmp_path):
    import gradio as gr
    import pytest

    backend = LocalBackend(colour_model, max_pixels=1_000_000)
    image = tmp_path / "c.png"
    Image.open(io.BytesIO(colour_image("C", size=300))).convert("RGBA").save(image)  # any mode, any size
    top = asyncio.run(classify_with_hand(backend, str(image), k=5)).top
    assert next(iter(top)) == "C" and len(top) == 4 and abs(sum(top.values()) - 1) < 1e-5
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(5_000, 5_000))  # the demo refuses what /predict refuses
    with pytest.raises(gr.Error, match="too large"):
        asyncio.run(classify_with_hand(backend, str(bomb), k=5))
    demo = build_demo(backend, ServeConfig())
    assert demo.title == "ASL alphabet recogniser"


def test_the_demo_reads_the_spelling_thresholds_when_it_uses_them(colour_model, tmp_path):
    """The ingress's reconfigure changes ``settings`` in place; open sessions and new pages follow."""
    settings = ServeConfig(spell_hold_s=30.0)
    demo = build_demo(LocalBackend(colour_model), settings)
    handlers = {fn.name: fn.fn for fn in demo.fns.values()}
    assert "held for 30 s" in handlers["on_load"]()
    image = tmp_path / "a.png"
    image.write_bytes(colour_image("A"))
    speller = Speller.of(settings)  # a session opened before the change
    settings.spell_hold_s = 0.05
    asyncio.run(handlers["on_frame"](str(image), speller, None))
    time.sleep(0.1)
    answer = shown(asyncio.run(handlers["on_frame"](str(image), speller, None)))
    assert answer["frame-overlay"] is None  # an image model finds no hand to draw
    assert answer["spelled"] == "A" and "added A" in answer["spell-status"] and answer["Speller"].hold_s == 0.05
    assert "held for 0.05 s" in handlers["on_load"]()
    assert shown(handlers["on_clear"](speller))["Speller"] is speller == Speller(0.05)  # emptied in place (a frame
    # in flight returns this same speller as its state, not an older copy that would undo the clear)


def test_an_unsure_frame_never_commits_a_letter():
    speller = Speller(hold_s=0.5)
    assert speller.update("A", 0.0, True) is None and speller.update("A", 0.3, False) is None
    assert speller.candidate is None  # the unsure frame restarted the hold
    assert speller.update("A", 0.6, True) is None and speller.update("A", 1.2, True) == "A"


# --------------------------------------------------------------------------- the Calibrate tab's session

CLASSES = ["A", "B", "L", "nothing"]
INFO = {"classes": CLASSES, "confidence": {"threshold": 0.5, "live_threshold": 0.7}}


def live(letter: str, probability: float, shape: int) -> "Prediction":
    """A hand from the page read as ``letter``; ``shape`` picks one of a few distinct hand poses."""
    from asl_platform.serving.backends import Prediction

    rng = np.random.default_rng(shape)
    probabilities = np.full(len(CLASSES), (1 - probability) / (len(CLASSES) - 1), np.float32)
    probabilities[CLASSES.index(letter)] = probability
    points = rng.uniform(0, 200, (21, 3))
    return Prediction(probabilities, {"found": True, "landmarks": points.tolist(), "handedness": "Right"}, False, "live")


def no_hand() -> "Prediction":
    from asl_platform.serving.backends import Prediction

    return Prediction(np.eye(len(CLASSES), dtype=np.float32)[CLASSES.index("nothing")], {"found": False}, False, "live")


def run(session, frames, start: float, step: float = 0.2) -> list[str]:
    return [session.offer(None, frame, start + i * step) for i, frame in enumerate(frames)]


def test_calibration_takes_shots_only_from_a_steady_hold_after_the_countdown_then_a_separate_check():
    from asl_platform.serving.sessions import CALIBRATION_READY_S, CALIBRATION_SHOTS, Calibrating

    session = Calibrating(["A", "B"], INFO, shown_at=0.0)
    early = run(session, [live("L", 0.9, 1)] * 5, start=0.0)  # the last letter's hand, still there
    assert set(early) == {"ready"} and session.shots("A") == 0
    steps = run(session, [live("A", 0.9, 2)] * 12, start=CALIBRATION_READY_S)
    assert steps.count("shot") == CALIBRATION_SHOTS and steps[:3] == ["hold"] * 3  # held still 0.6 s first
    assert session.phase == "lower" and session.target == "A"  # the same hold gives no check
    run(session, [no_hand(), live("A", 0.8, 3)], start=5.0)  # lowered, then signed again
    assert session.target == "A" and session.phase == "check"
    run(session, [live("A", 0.8, 3)] * 5, start=5.5)
    assert session.target == "B" and session.takes["A"].check is not None  # the check hold: the next letter
    labelled, predictions, checks = session.labelled()
    assert [letter for letter, _ in labelled] == ["A"] * CALIBRATION_SHOTS and [c[0] for c in checks] == ["A"]


def test_a_hand_the_model_confidently_reads_as_another_letter_is_flagged_not_stored_and_can_be_kept():
    from asl_platform.serving.tabs.calibrate import calibration_target
    from asl_platform.serving.sessions import CALIBRATION_READY_S, Calibrating

    session = Calibrating(["A", "B"], INFO, shown_at=0.0)
    steps = run(session, [live("L", 0.9, 4)] * 6, start=CALIBRATION_READY_S)  # confidently L, asked for A
    assert "flagged" in steps and session.shots("A") == 0
    assert "This looks like L" in calibration_target(session) and "Keep it" in calibration_target(session)
    unsure = Calibrating(["A"], INFO, shown_at=0.0)  # an unsure L (below the live threshold) is a shot
    assert "shot" in run(unsure, [live("L", 0.6, 4)] * 6, start=CALIBRATION_READY_S)
    session.keep(now=3.0)  # this is how the learner signs A: kept on purpose, and later frames too
    assert session.shots("A") == 1 and session.takes["A"].flagged is None
    assert run(session, [live("L", 0.9, 4)] * 3, start=3.5).count("shot") >= 1


def test_a_letter_can_be_redone_skipped_and_gone_back_to():
    from asl_platform.serving.tabs.calibrate import calibration_progress
    from asl_platform.serving.sessions import CALIBRATION_READY_S, Calibrating

    session = Calibrating(["A", "B", "L"], INFO, shown_at=0.0)
    run(session, [live("A", 0.9, 5)] * 8, start=CALIBRATION_READY_S)
    assert session.shots("A") >= 1
    session.redo(now=10.0)  # this one again, from nothing
    assert session.shots("A") == 0 and session.target == "A" and session.shown_at == 10.0
    session.skip(now=11.0)
    assert session.target == "B" and session.takes["A"].skipped and "Skipped: A" in calibration_progress(session)
    session.redo(now=12.0, letter="A")  # back to a skipped letter
    assert session.target == "A" and not session.takes["A"].skipped
    assert "Letter 1 of 3" in calibration_progress(session)
