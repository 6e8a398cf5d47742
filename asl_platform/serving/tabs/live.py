"""A live view: the webcam in the page, where ``static/live.js`` finds the hand's landmarks (MediaPipe Hands in
WebAssembly) and sends them to the server through hidden components; the page falls back to the server's frame path
(the webcam component beside it) when in-page landmarks cannot run, and says why and what to do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import gradio as gr

# Why the page cannot find hands itself when the server has no MediaPipe files (live.js shows it in the note).
ASSETS_MISSING = ("this server has no copy of MediaPipe's hand models: it fetches them from the npm registry on its "
                  "first start, and could not")


def assets_missing_script() -> str:
    """The page's head tells live.js at once that the server has no hand models (no failed fetch to wait for)."""
    import json

    return f"<script>window.aslLiveMissing = {json.dumps(ASSETS_MISSING)};</script>"


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
  <p class="asl-live-fallback-note" id="{name}-live-fallback"><strong>In-page hand landmarks are not available
    here</strong> (<span class="asl-live-reason"></span>). The webcam beside this sends its frames to the server
    instead: press its record button. Answers still come, a little slower. To find hands in the page, use a current Chrome,
    Edge, Firefox or Safari; if the server has no hand models, whoever runs it starts it once with access to
    registry.npmjs.org (docs/serving.md, "Live modes").</p>
</div>"""

LIVE_CSS = """
.asl-live-frame { position: relative; max-width: 480px; }
.asl-live-frame video { width: 100%; display: block; background: #222; }
.asl-live-frame canvas { position: absolute; inset: 0; width: 100%; height: 100%; pointer-events: none; }
.asl-live-answer { font-size: 1.6em; font-weight: 600; min-height: 1.4em; margin: 0.3em 0; }
.asl-live-fallback-note { display: none; }
body.asl-live-server .asl-live-fallback-note { display: block !important; }
body.asl-live-server .asl-live-view { display: none !important; }
body.asl-live-browser .asl-server-camera { display: none !important; }
"""
# !important where the body's class decides: Gradio also adds each rule under its own container's classes
# (".gradio-container... .contain .asl-live-fallback-note"), which outranks a plain body selector.
