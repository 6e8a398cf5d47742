"""Serving: the HTTP API and Gradio demo on Ray Serve.

``protocol``     the HTTP contract: JSON errors, reading uploads within the limits, bytes -> model input
``backends``     what the app classifies with: a model in-process, or the model deployment via a handle
``app``          the FastAPI app (``create_app``)
``demo``         the Gradio demo at /demo and the fingerspelling rules (``Speller``)
``deployments``  the Serve deployments, the application builders and ``asl-platform serve``

Nothing here imports the training stack. ``serve_config.yaml`` names
``asl_platform.serving.deployments:build_app``.
"""
