"""Models: the backbone registry, the classifier, model folders with their typed card, and the Predictor.

``backbones`` (architectures and pretrained weights), ``classifier`` (frozen backbone + head, and what
training changes), ``card`` (``model.json``), ``store`` (folders, versions, remote models),
``predictor`` (inference). The names below are the package's public surface.
"""

from asl_platform.model.backbones import (
    BACKBONES,
    IMAGENET,
    TF_LITE,
    BackboneSpec,
    WeightsUnavailableError,
    build_backbone,
    efficientnet_lite0_weights_file,
    get_backbone_spec,
    load_safetensors,
    read_state_dict,
    split_backbone,
)
from asl_platform.model.card import DataCard, ModelCard, ModelCardError, write_readme
from asl_platform.model.classifier import (
    ASLClassifier,
    LastStageClassifier,
    build_classifier,
    build_head,
    build_last_stage_classifier,
    into_classifier,
    load_trained_state,
    trained_state,
)
from asl_platform.model.predictor import Predictor
from asl_platform.model.store import (
    MODEL_CACHE_ENV,
    WEIGHTS_FILE,
    fetch_model_dir,
    load_model_dir,
    mark_latest,
    model_cache_root,
    model_location,
    next_version_dir,
    resolve_model_dir,
    save_model_dir,
)

__all__ = [
    "ASLClassifier", "BACKBONES", "BackboneSpec", "DataCard", "IMAGENET", "LastStageClassifier", "MODEL_CACHE_ENV",
    "ModelCard", "ModelCardError", "Predictor", "TF_LITE", "WEIGHTS_FILE", "WeightsUnavailableError",
    "build_backbone", "build_classifier", "build_head", "build_last_stage_classifier", "efficientnet_lite0_weights_file",
    "fetch_model_dir", "get_backbone_spec", "into_classifier", "load_model_dir", "load_safetensors",
    "load_trained_state", "mark_latest", "model_cache_root", "model_location", "next_version_dir", "read_state_dict",
    "resolve_model_dir", "save_model_dir", "split_backbone", "trained_state", "write_readme",
]
