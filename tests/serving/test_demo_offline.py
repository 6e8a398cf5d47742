"""The demo of a hand-aware model on a server that has no copy of the browser's hand models (it could not reach the
npm registry at its first start), in Chromium: the page says so at once, with what to do, and the live tabs use the
server's webcam path instead (its webcam shown, the in-page view hidden)."""

from __future__ import annotations

import pytest
from helpers.browser import ARTIFACTS, block_external, launch_chromium
from helpers.probe import serve_in_thread
from helpers.serving import hand_settings

from asl_platform.serving import browser_hands
from asl_platform.serving.app import create_app
from asl_platform.serving.backends import LocalBackend
from asl_platform.serving.tabs.live import ASSETS_MISSING

pytestmark = [pytest.mark.real_data]


def test_without_the_hand_models_the_page_says_so_and_what_to_do(hand_model, playwright_or_skip, monkeypatch):
    monkeypatch.setattr(browser_hands, "ensure_assets", lambda *args, **kwargs: False)  # offline at first start
    url, server = serve_in_thread(create_app(LocalBackend(hand_model), hand_settings(hand_model)))
    browser = launch_chromium(playwright_or_skip)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        external = block_external(page)
        page.goto(f"{url}/demo/", wait_until="load")
        for tab, camera in (("Practice", "practice-camera"), ("Fingerspelling", "camera")):
            page.get_by_role("tab", name=tab).click()
            note = page.locator(f"#{'practice' if tab == 'Practice' else 'spell'}-live-fallback")
            note.wait_for(state="visible", timeout=30_000)
            text = note.inner_text()
            assert ASSETS_MISSING in text and "registry.npmjs.org" in text and "record button" in text, text
            assert page.locator(f"#{camera}").is_visible()  # the server's webcam path instead
            assert not page.locator(f"#{'practice' if tab == 'Practice' else 'spell'}-live-start").is_visible()
        page.screenshot(path=str(ARTIFACTS / "demo_offline.png"), full_page=True)
        assert external == []
    finally:
        browser.close()
        server.should_exit = True
