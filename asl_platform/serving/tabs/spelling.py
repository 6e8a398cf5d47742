"""The Fingerspelling tab: the webcam builds text letter by letter (the rules: ``serving.sessions.Speller``)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from asl_platform.config import ServeConfig
from asl_platform.serving.backends import confident
from asl_platform.serving.practice import NOT_SURE
from asl_platform.serving.sessions import Speller
from asl_platform.serving.tabs.frames import Frame, LiveHand, Profile, classify_live_hand, classify_with_hand, overlay
from asl_platform.serving.tabs.live import live_view

if TYPE_CHECKING:
    import gradio as gr

    from asl_platform.serving.backends import Backend


def spelling_help(settings: ServeConfig, hand_aware: bool = False) -> str:
    start = ("Press **Start camera** (or, where the page sends frames to the server, the webcam's record button) and "
             "sign" if hand_aware else "Press the webcam's record button and sign")
    return (f"{start} letters to the webcam. A letter is added once it is held for {settings.spell_hold_s:g} s; "
            "`space` adds a space, `del` deletes, `nothing` (hand down) pauses. "
            "To spell a double letter, drop your hand for a moment between the two.")


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
    """Returns the instructions, which each page load refreshes (the hold time changes with the ingress's
    user_config)."""
    import gradio as gr

    info = backend.info
    hand_aware = info.get("kind") == "hand_aware"

    async def on_frame(image: str | None, state: Speller, profile: Profile | None) -> dict:
        if image is None:
            return {spelled: state.text, status: "", frame_view: None}
        frame = await classify_with_hand(backend, image, k=5, profile=profile)
        line = spell_step(state, frame, settings, info)
        return {spelled: state.text, status: line, speller: state,
                frame_view: await asyncio.to_thread(overlay, image, frame.hand)}

    async def on_hand(message: str, state: Speller, profile: Profile | None) -> dict:
        hand = LiveHand.read(message)
        if hand is None:
            return {}
        frame = await classify_live_hand(backend, hand, k=5, profile=profile)
        line = "(no hand found)" if frame is None else spell_step(state, frame, settings, info)  # None: no 'nothing'
        return {spelled: state.text, status: line, speller: state, live_hand.seq: f"{hand.seq}"}

    def on_clear(state: Speller) -> dict:
        # In place, not a new Speller: a frame answered meanwhile returns this same (now empty) speller as
        # its state, where a new one would be overwritten by the older speller that frame was given.
        state.clear()
        state.follow(settings)
        return {spelled: "", status: "", speller: state}

    with gr.Tab("Fingerspelling"):
        instructions = gr.Markdown(spelling_help(settings, hand_aware), elem_id="spell-help")
        speller = gr.State(Speller.of(settings))
        server_only = ["asl-server-camera"] if hand_aware else None  # hidden while the page finds the hand
        with gr.Row():
            if hand_aware:
                live_hand = live_view("spell")
            camera = gr.Image(sources=["webcam"], streaming=True, type="filepath", image_mode=None,
                              label="Webcam (frames to the server)" if hand_aware else "Webcam", elem_id="camera",
                              elem_classes=server_only)
            with gr.Column():
                spelled = gr.Textbox(label="Text", interactive=False, elem_id="spelled")
                status = gr.Markdown(elem_id="spell-status")
                clear = gr.Button("Clear", elem_id="clear")
                frame_view = gr.Image(label="Hand found", interactive=False, elem_id="frame-overlay",
                                      visible=hand_aware, elem_classes=server_only)
        camera.stream(on_frame, inputs=[camera, speller, profile], outputs=[spelled, status, speller, frame_view],
                      stream_every=0.3, time_limit=600, api_visibility="private")
        if hand_aware:  # the hand found in the page; while one is answered, only the latest waits
            live_hand.click(on_hand, inputs=[live_hand.hand, speller, profile],
                            outputs=[spelled, status, speller, live_hand.seq], js=live_hand.js,
                            trigger_mode="always_last", show_progress="hidden", api_visibility="private")
        clear.click(on_clear, inputs=speller, outputs=[spelled, status, speller], api_visibility="private")
    return instructions
