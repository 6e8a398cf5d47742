"""The demo's tabs (``serving.demo`` puts them on one page): each wires a session's rules to Gradio components.

``photo``, ``spelling``, ``practice``, ``calibrate``: one tab each; ``live``: the in-page webcam view they share;
``frames``: what they answer with (a frame or a hand through the backend, the session's profile); ``pictures``:
the hands a learner copies (``hands.figure``).
"""
