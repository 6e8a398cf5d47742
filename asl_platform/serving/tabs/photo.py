"""The Photo tab: a photo (upload, webcam snapshot, clipboard) -> the top 5 letters and the hand found."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from asl_platform.serving.tabs.frames import Profile, classify_with_hand, overlay

if TYPE_CHECKING:
    import gradio as gr

    from asl_platform.serving.backends import Backend


def photo_tab(backend: Backend, profile: gr.State) -> None:
    import gradio as gr

    async def on_photo(image: str | None, profile: Profile | None) -> dict:
        if image is None:
            return {letters: None, hand_view: None}
        frame = await classify_with_hand(backend, image, k=5, profile=profile)
        return {letters: frame.top, hand_view: await asyncio.to_thread(overlay, image, frame.hand)}

    with gr.Tab("Photo"):
        gr.Markdown("Upload a photo of a hand sign, take one with the webcam, or paste one: the model's five most "
                    "likely letters, and the hand it found.")
        with gr.Row():
            photo = gr.Image(sources=["upload", "webcam", "clipboard"], type="filepath", image_mode=None,
                             label="Hand sign", elem_id="photo")
            letters = gr.Label(num_top_classes=5, label="Top 5 letters", elem_id="letters")
            hand_view = gr.Image(label="Hand found", interactive=False, elem_id="hand-overlay",
                                 visible=backend.info.get("kind") == "hand_aware")
        photo.change(on_photo, inputs=[photo, profile], outputs=[letters, hand_view], api_visibility="private")
