"""asl_platform.serving.demo: the fingerspelling rules (pure logic) and the demo's wiring to a real model."""

from __future__ import annotations

import asyncio
import io
import time

from helpers.models import colour_image
from helpers.serving import png_header_only
from PIL import Image

from asl_platform.config import ServeConfig
from asl_platform.serving.backends import LocalBackend
from asl_platform.serving.demo import Speller, build_demo, classify_with_hand


def feed(speller: Speller, frames: list[tuple[str, float]], step: float = 0.25) -> list[str | None]:
    return [speller.update(label, probability, now=i * step) for i, (label, probability) in enumerate(frames)]


def test_letter_is_committed_once_after_holding():
    speller = Speller(hold_s=1.0, min_probability=0.6)
    committed = feed(speller, [("A", 0.9)] * 10)
    assert committed.count("A") == 1 and committed.index("A") == 4  # 1.0 s after the first frame
    assert speller.text == "A"


def test_short_glimpses_and_unsure_frames_do_not_commit():
    speller = Speller(hold_s=1.0, min_probability=0.6)
    feed(speller, [("B", 0.9), ("B", 0.9), ("C", 0.9), ("B", 0.9), ("B", 0.5), ("B", 0.9), ("B", 0.9)])
    assert speller.text == ""


def test_double_letter_needs_a_pause_and_specials_work():
    speller = Speller(hold_s=0.5, min_probability=0.6)
    frames = ([("L", 0.9)] * 4 + [("nothing", 0.9)] * 4 + [("L", 0.9)] * 4 + [("space", 0.8)] * 4
              + [("O", 0.9)] * 4 + [("del", 0.9)] * 3 + [("K", 0.95)] * 3)
    feed(speller, frames)
    assert speller.text == "LL K"


def test_del_repeats_while_held_and_clear_resets():
    speller = Speller(hold_s=0.5, min_probability=0.6, text="ABCD")
    feed(speller, [("del", 0.9)] * 7)  # commits at 0.5, 1.0, 1.5 s
    assert speller.text == "A"
    speller.clear()
    assert (speller.text, speller.candidate, speller.committed) == ("", None, None)
    assert speller.progress(now=0.0) == 0.0


def test_progress_grows_towards_a_commit():
    speller = Speller(hold_s=1.0)
    speller.update("Y", 0.9, now=0.0)
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
    text, status, speller, overlay = asyncio.run(handlers["on_frame"](str(image), speller, None))
    assert overlay is None  # an image model finds no hand to draw
    assert text == "A" and "added A" in status and speller.hold_s == 0.05
    assert "held for 0.05 s" in handlers["on_load"]()
    settings.spell_min_probability = 0.99
    asyncio.run(handlers["on_frame"](str(image), speller, None))
    assert speller.min_probability == 0.99
    assert handlers["on_clear"](speller)[2] is speller == Speller(0.05, 0.99)  # emptied in place (a frame in flight
    # returns this same speller as its state, not an older copy that would undo the clear)


def test_an_unsure_frame_never_commits_a_letter():
    speller = Speller(hold_s=0.5, min_probability=0.5)
    assert speller.update("A", 0.9, 0.0) is None and speller.update("A", 0.9, 0.3, confident=False) is None
    assert speller.candidate is None  # the unsure frame restarted the hold
    assert speller.update("A", 0.9, 0.6) is None and speller.update("A", 0.9, 1.2) == "A"
