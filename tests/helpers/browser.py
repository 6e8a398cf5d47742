"""Driving the demo in Debian's headless Chromium with Playwright (the ``playwright_or_skip`` fixture is in
the serving package's conftest): offline pages that record any request leaving localhost, a fake webcam."""

from __future__ import annotations

import shutil

from helpers.datasets import REPO_ROOT

ARTIFACTS = REPO_ROOT / "test-artifacts"  # screenshots, kept by CI
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def launch_chromium(playwright, extra_args: tuple[str, ...] = ()):
    """Debian's Chromium, headless, with nothing allowed to phone home (this network is closed)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", *extra_args,
    ])


def block_external(page) -> list[str]:
    """Abort and record every request that leaves localhost: the demo must work offline."""
    external: list[str] = []

    def route(route):
        if route.request.url.startswith(("http://127.0.0.1", "http://localhost", "data:", "blob:")):
            return route.continue_()
        external.append(route.request.url)
        return route.abort()

    page.route("**/*", route)
    return external


def upload_photo_in_the_demo(browser, server: str, image_path) -> tuple:
    """Open the demo offline (every request leaving localhost is refused and recorded), upload a photo
    on its Photo tab and wait for the letters; returns the page and the refused external URLs."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    external = block_external(page)
    page.goto(f"{server}/demo/", wait_until="load")
    page.wait_for_selector("#photo input[type=file]", state="attached", timeout=60_000)
    assert "ASL alphabet recogniser" in page.content()
    page.locator("#photo input[type=file]").set_input_files(str(image_path))
    page.wait_for_function("document.querySelector('#letters')?.innerText.includes('%')", timeout=60_000)
    return page, external


def chromium_with_fake_webcam(playwright, video):
    """Chromium whose webcam plays ``video`` (a Y4M), camera allowed without asking."""
    return launch_chromium(playwright, ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                                        f"--use-file-for-fake-video-capture={video}"))


def open_demo_tab(browser, server: str, tab: str, height: int = 800) -> tuple:
    """Open the demo offline (external requests refused and recorded) on ``tab``; returns the page and the refused URLs."""
    page = browser.new_context(permissions=["camera"], viewport={"width": 1280, "height": height}).new_page()
    external = block_external(page)
    page.goto(f"{server}/demo/", wait_until="load")
    page.get_by_role("tab", name=tab).click()
    return page, external


def start_webcam(page, camera: str) -> None:
    page.locator(f"#{camera}").get_by_text("Click to Access Webcam").click()
    page.locator(f"#{camera} button", has_text="Record").click()
