"""The training pipeline's stages, in the order ``asl_platform.pipeline`` runs them: ``ingest`` (list,
split, check the images), ``features`` (backbone outputs, cached), ``hands`` (MediaPipe landmarks,
cached), ``tune`` (the ASHA search), ``retrain`` (Ray Train on the best configuration), ``evaluate``
(held-out and cross-domain reports), ``export`` (the versioned model folder, its card, the "not sure"
threshold and the fusion rule) with ``onnx_export`` (ONNX copies checked against torch)."""
