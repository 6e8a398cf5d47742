"""The Calibrate tab (a hand-aware model): each letter in turn from the webcam (the rules:
``serving.sessions.Calibrating``), then the profile (``serving.calibration``), which can be downloaded, loaded
again, or forgotten; it stays in the page's session and every tab answers with it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from asl_platform.serving.backends import Prediction
from asl_platform.serving.calibration import build_profile
from asl_platform.serving.practice import model_shapes, practice_letters
from asl_platform.serving.protocol import ApiError
from asl_platform.serving.sessions import CALIBRATION_SHOTS, Calibrating
from asl_platform.serving.tabs.frames import LiveHand, Profile, classify_frame, classify_live_hand, overlay
from asl_platform.serving.tabs.live import live_view
from asl_platform.serving.tabs.pictures import how_to_sign, target_picture

if TYPE_CHECKING:
    import gradio as gr

    from asl_platform.serving.backends import Backend

CALIBRATION_STEPS = {
    "ready": "get ready…", "hold": "hold it still…", "shot": "frame taken, keep holding…",
    "flagged": "not taken: see above", "lower": "now lower your hand, then sign it once more for the check",
    "check": "checked",
}
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


def calibration_target(session: Calibrating | None, shapes: dict | None = None) -> str:
    if session is None:
        return ("Calibrate the recogniser to **your** hands: press **Start**, then **Start camera**, and sign each "
                "letter as shown. Hold it still: three frames are taken, then lower your hand and sign it once more "
                "(a check that measures the calibration). Skip a letter you do not know yet. About two minutes in all.")
    if session.target is None:
        return "All letters done: press **Finish**."
    target, take = session.target, session.take(session.target)
    lines = [f"## Sign **{target}**", *how_to_sign(shapes or {}, target)]
    if take.flagged is not None:
        lines.append(f"**This looks like {take.flagged[2]}** to the model, not {target}. Sign {target} again, or press "
                     f"**Keep it** if this is how you sign {target}.")
    return "\n\n".join(line for line in lines if line)


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


def calibrate_tab(backend: Backend, profile: gr.State, left_handed: gr.Checkbox) -> None:
    import gradio as gr

    info = backend.info
    shapes = model_shapes(info)
    pool = practice_letters(info["classes"])

    def view(session: Calibrating | None, left: bool) -> dict:
        return {target: calibration_target(session, shapes), progress: calibration_progress(session), state: session,
                reference: target_picture(shapes, session.target if session else None, left)}

    def on_calibrate_start(left: bool) -> dict:
        return view(Calibrating(pool, info, shown_at=time.monotonic()), left)

    def on_calibrate_skip(session: Calibrating | None, left: bool) -> dict:
        if session is not None:
            session.skip(time.monotonic())
        return view(session, left)

    def on_calibrate_redo(session: Calibrating | None, letter: str | None, left: bool) -> dict:
        if session is not None:
            session.redo(time.monotonic(), letter or None)
        return view(session, left)

    def on_calibrate_keep(session: Calibrating | None, left: bool) -> dict:
        if session is not None:
            session.keep(time.monotonic())
        return view(session, left)

    async def finish(session: Calibrating | None, current: Profile | None, left: bool) -> dict:
        """The profile from the session so far (the session stays: the learner can go on, or redo letters)."""
        labelled, predictions, checks = session.labelled() if session is not None else ([], [], [])
        if not labelled:
            return {**view(session, left), report: "No frames of a held hand yet: press **Start**, then **Start "
                    "camera**, and hold each letter still."}
        result = await build_profile(backend, labelled, predictions, checks)
        text = calibration_report(result)
        new = Profile.of(result["profile"], info, text) if result["profile"] else current
        return {**view(session, left), profile: new, report: text, profile_json: new.document if new else None}

    async def offered(session: Calibrating, data: bytes | None, prediction: Prediction, current: Profile | None,
                      left: bool) -> dict:
        """A frame (or a hand from the page) offered to the session: the view, and the profile once the last
        letter is done. The profile is left out otherwise: a frame in flight while a profile is loaded must not
        undo it."""
        asked = session.target
        session.offer(data, prediction, time.monotonic())
        if session.target is None:
            return await finish(session, current, left)
        if session.target != asked:  # the next letter: its picture too
            return view(session, left)
        return {target: calibration_target(session, shapes), progress: calibration_progress(session), state: session}

    async def on_calibrate_frame(image: str | None, session: Calibrating | None, current: Profile | None,
                                 left: bool) -> dict:
        if image is None or session is None or session.target is None:
            return {camera_overlay: None}
        data = await asyncio.to_thread(Path(image).read_bytes)
        frame = await classify_frame(backend, data, k=1)  # the model alone: a shot records the hand as it is
        update = await offered(session, data, frame.prediction, current, left)
        return {**update, camera_overlay: await asyncio.to_thread(overlay, image, frame.hand)}

    async def on_calibrate_hand(message: str, session: Calibrating | None, current: Profile | None,
                                left: bool) -> dict:
        """A hand found in the page (the live view): its landmarks are the shot, no image."""
        hand = LiveHand.read(message)
        if hand is None:
            return {}
        seen = {live_hand.seq: f"{hand.seq}"}
        if session is None or session.target is None:
            return seen
        frame = await classify_live_hand(backend, hand, k=1)  # the model alone, as for a frame
        prediction = frame.prediction if frame is not None else Prediction(np.zeros(len(info["classes"])),
                                                                            {"found": False})
        return {**seen, **await offered(session, None, prediction, current, left)}

    def on_profile_upload(path: str | None) -> dict:
        if path is None:
            return {profile: None, report: "", profile_json: None}
        try:
            loaded = Profile.of(json.loads(Path(path).read_text()), info, "Profile loaded from your file.")
        except (OSError, ValueError, RecursionError) as exc:  # unreadable, not JSON, nested too deeply
            raise gr.Error(f"not a calibration profile: {exc}") from None
        except ApiError as exc:
            raise gr.Error(exc.message) from None
        finally:
            Path(path).unlink(missing_ok=True)  # the upload's copy in Gradio's cache: nothing kept on the server
        return {profile: loaded, report: loaded.report, profile_json: loaded.document}

    def on_profile_forget() -> dict:
        return {profile: None, report: "Calibration removed: the model alone answers again.", profile_json: None}

    with gr.Tab("Calibrate"):
        state = gr.State(None)
        with gr.Row():
            start = gr.Button("Start", variant="primary", elem_id="calibrate-start")
            keep = gr.Button("Keep it", elem_id="calibrate-keep")
            skip = gr.Button("Skip letter", elem_id="calibrate-skip")
            letter = gr.Dropdown(pool, value=None, label="Letter to redo (none: this one)", elem_id="calibrate-letter")
            redo = gr.Button("Redo letter", elem_id="calibrate-redo")
            done = gr.Button("Finish", elem_id="calibrate-finish")
        with gr.Row():
            with gr.Column():
                target = gr.Markdown(calibration_target(None), elem_id="calibrate-target")
                reference = gr.Image(label="How it looks", interactive=False, height=200,
                                     elem_id="calibrate-reference", visible=bool(shapes))
                progress = gr.Markdown(elem_id="calibrate-progress")
            live_hand = live_view("calibrate")
            camera = gr.Image(sources=["webcam"], streaming=True, type="filepath", image_mode=None,
                              label="Webcam (frames to the server)", elem_id="calibrate-camera",
                              elem_classes=["asl-server-camera"])
            camera_overlay = gr.Image(label="Your hand", interactive=False, height=240,
                                      elem_id="calibrate-overlay", elem_classes=["asl-server-camera"])
        report = gr.Markdown(elem_id="calibrate-report")
        profile_json = gr.JSON(visible=False, elem_id="profile-json")
        with gr.Row():
            download = gr.Button("Download my profile", elem_id="profile-download")
            upload = gr.UploadButton("Load a profile", file_types=[".json"], elem_id="profile-upload")
            forget = gr.Button("Forget my profile", elem_id="profile-forget")
        shown = [target, reference, progress, state]
        everything = [*shown, profile, report, profile_json]
        start.click(on_calibrate_start, inputs=left_handed, outputs=shown, api_visibility="private")
        skip.click(on_calibrate_skip, inputs=[state, left_handed], outputs=shown, api_visibility="private")
        keep.click(on_calibrate_keep, inputs=[state, left_handed], outputs=shown, api_visibility="private")
        redo.click(on_calibrate_redo, inputs=[state, letter, left_handed], outputs=shown, api_visibility="private")
        left_handed.change(view, inputs=[state, left_handed], outputs=shown, api_visibility="private")
        done.click(finish, inputs=[state, profile, left_handed], outputs=everything, api_visibility="private")
        camera.stream(on_calibrate_frame, inputs=[camera, state, profile, left_handed],
                      outputs=[*everything, camera_overlay], stream_every=0.3, time_limit=600,
                      show_progress="hidden", api_visibility="private")
        live_hand.click(on_calibrate_hand, inputs=[live_hand.hand, state, profile, left_handed],
                        outputs=[*everything, live_hand.seq], js=live_hand.js,
                        trigger_mode="always_last", show_progress="hidden", api_visibility="private")
        # Made in the browser from the page's copy: the server writes no file for a download.
        download.click(None, inputs=profile_json, js=DOWNLOAD_JS, api_visibility="private")
        # The live views send the page's copy with each hand to POST /v1/landmarks (static/live.js).
        profile_json.change(None, inputs=profile_json, js=PROFILE_TO_PAGE_JS, api_visibility="private")
        upload.upload(on_profile_upload, inputs=upload, outputs=[profile, report, profile_json],
                      api_visibility="private")
        forget.click(on_profile_forget, outputs=[profile, report, profile_json], api_visibility="private")
