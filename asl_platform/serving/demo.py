"""Gradio demo, mounted at ``/demo`` by the HTTP app: a photo (upload or webcam snapshot) -> top-5 letters, a
fingerspelling mode where a live webcam stream builds text letter by letter, a practice mode that teaches the
letters, and, for a hand-aware model, a calibration to the learner's own hands that every tab then answers with.

Each tab is a module of ``serving/tabs/`` that wires the session's rules (``serving.sessions``,
``serving.practice``) to components; here they are put on one page with a header that says which model answers
each tab and how often it is right on other people. An answer that is not confident (the model card's threshold)
never commits a letter or passes a practice target: the screen says "not sure" instead.

It classifies through the same backend as ``/predict`` (so through ``@serve.batch`` on Serve), and
it loads nothing from the internet: system fonts instead of Google Fonts, no analytics.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from asl_platform.config import ServeConfig
from asl_platform.serving.tabs.calibrate import calibrate_tab
from asl_platform.serving.tabs.live import LIVE_CSS, assets_missing_script
from asl_platform.serving.tabs.photo import photo_tab
from asl_platform.serving.tabs.pictures import LEFT_HANDED
from asl_platform.serving.tabs.practice import practice_tab
from asl_platform.serving.tabs.spelling import spelling_help, spelling_tab

if TYPE_CHECKING:
    import gradio as gr
    from fastapi import FastAPI

    from asl_platform.serving.backends import Backend

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline demo

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Consolas", "Liberation Mono", "monospace"]


def _share(metrics: dict, name: str) -> str | None:
    value = metrics.get(name)
    return f"{value:.1%}" if isinstance(value, (int, float)) and value == value else None


def model_header(info: dict) -> str:
    """The model, and for each tab what answers it and how often that is right on other people (the model card's
    cross-domain figures; in-domain is the training signers' held-out test photos)."""
    metrics = info.get("metrics", {})
    photos, live, test = (_share(metrics, name) for name in
                          ("cross_domain_accuracy", "cross_domain_accuracy_live", "test_accuracy"))
    lines = [f"Model **{info['name']}/{info['version']}** ({info['backbone']})"
             + (f": {test} right on held-out photos of the people it was trained on." if test else ".")]
    unmeasured = "not measured on other people: expect less on your own hands"
    whole = "the whole model (image and hand landmarks)" if info.get("kind") == "hand_aware" else "the image model"
    lines.append(f"- **Photo**: {whole}: " + (f"**{photos}** right on other people's photos." if photos else unmeasured))
    if info.get("kind") == "hand_aware":
        lines.append("- **Calibrate, Fingerspelling, Practice**: the landmark model, on the hand found in your page: "
                     + (f"**{live}** right on other people's webcam frames" if live else unmeasured)
                     + " (a frame sent to the server instead is answered by the whole model).")
    else:
        lines.append("- **Fingerspelling, Practice**: the same model, on each webcam frame.")
    return "\n".join(lines)


def build_demo(backend: Backend, settings: ServeConfig) -> gr.Blocks:
    """The demo's tabs, wired to ``backend``: sharing the session's calibration profile and the left-handed
    setting."""
    import gradio as gr

    info = backend.info
    with gr.Blocks(title="ASL alphabet recogniser", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# ASL alphabet recogniser\n" + model_header(info), elem_id="model-header")
        left_handed = gr.Checkbox(False, label=LEFT_HANDED, elem_id="left-handed")
        profile = gr.State(None)  # the calibration profile of this page's session, used by every tab
        photo_tab(backend, profile)
        if info.get("kind") == "hand_aware":
            calibrate_tab(backend, profile, left_handed)
        instructions = spelling_tab(backend, settings, profile)
        practice_tab(backend, settings, profile, left_handed)

        def on_load() -> str:
            return spelling_help(settings, info.get("kind") == "hand_aware")

        # Each page load shows the hold time in force now (it changes with the ingress's user_config).
        demo.load(on_load, outputs=instructions, show_progress="hidden", api_visibility="private")
    return demo


def mount_demo(app: FastAPI, backend: Backend, settings: ServeConfig, browser_assets: bool | None = None) -> FastAPI:
    """Mount the demo at /demo with a theme that needs no web fonts. ``browser_assets``: whether the page's
    MediaPipe files are here (None: make sure of them now, blocking)."""
    import gradio as gr

    from asl_platform.serving.browser_hands import add_browser_routes, ensure_assets

    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    demo = build_demo(backend, settings)
    live = backend.info.get("kind") == "hand_aware"  # the live modes answer from landmarks: a landmark model's
    assets = True
    if live:
        assets = ensure_assets() if browser_assets is None else browser_assets  # without them the page says so
        add_browser_routes(app)
    head = '<script src="../hands/live.js"></script>' + ("" if assets else assets_missing_script())
    app = gr.mount_gradio_app(app, demo, path="/demo", theme=theme,
                              max_file_size=settings.max_request_bytes, footer_links=[],
                              css=LIVE_CSS if live else None, head=head if live else None)
    # Gradio checks that a file named in an event was uploaded by this user (processing_utils._check_allowed)
    # only once the Blocks "has launched", which mount_gradio_app never sets: without this, a client could
    # name /etc/passwd as the image and fetch the cached copy from /demo/gradio_api/file=... (tests/serving/test_security.py).
    demo.has_launched = True
    return app
