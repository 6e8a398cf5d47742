"""The classifier: a frozen backbone (its last stage optionally trained) followed by the two fully
connected layers on top (as in the SageMaker capstone this began as), and the piece of it that is trained on cached trunk
activations (``LastStageClassifier``).

What training changes is ``trained_state``: checkpoints hold only that, never the frozen backbone.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from asl_platform.model.backbones import build_backbone, get_backbone_spec, split_backbone


def build_head(feature_dim: int, num_classes: int, hidden_size: int, dropout: float) -> nn.Sequential:
    """The two new fully connected layers on the frozen backbone: Linear -> ReLU -> Dropout -> Linear."""
    return nn.Sequential(
        nn.Linear(feature_dim, hidden_size), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_size, num_classes)
    )


class _HeadOnPretrained(nn.Module):
    """A pretrained module (named ``pretrained_name``) followed by the head. ``train()`` leaves the
    pretrained part in eval mode, so its BatchNorm keeps the pretrained statistics even where its
    last stage is trained (a small dataset would otherwise wreck them)."""

    pretrained_name: str
    head: nn.Sequential

    def train(self, mode: bool = True):
        super().train(mode)
        getattr(self, self.pretrained_name).eval()
        return self

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(getattr(self, self.pretrained_name)(inputs))


class ASLClassifier(_HeadOnPretrained):
    """Backbone (frozen except, optionally, its last stage) followed by the head."""

    pretrained_name = "backbone"

    def __init__(self, backbone_name: str, backbone: nn.Module, head: nn.Sequential, unfreeze_last_stage: bool = False):
        super().__init__()
        self.backbone_name = backbone_name
        self.backbone = backbone
        self.head = head
        self.unfreeze_last_stage = unfreeze_last_stage
        for parameter in self.backbone.parameters():
            parameter.requires_grad = False
        for parameter in self.last_stage_parameters():
            parameter.requires_grad = True

    def last_stage_parameters(self) -> list[nn.Parameter]:
        """The backbone parameters that are trained (none unless ``unfreeze_last_stage``)."""
        if not self.unfreeze_last_stage:
            return []
        return list(get_backbone_spec(self.backbone_name).last_stage(self.backbone).parameters())


def build_classifier(
    backbone: str, weights: str, num_classes: int, hidden_size: int, dropout: float, unfreeze_last_stage: bool = False
) -> ASLClassifier:
    spec = get_backbone_spec(backbone)
    head = build_head(spec.feature_dim, num_classes, hidden_size, dropout)
    return ASLClassifier(backbone, build_backbone(backbone, weights), head, unfreeze_last_stage)


class LastStageClassifier(_HeadOnPretrained):
    """The backbone's last stage (its ``split_backbone`` tail) followed by the head: what is trained
    on cached trunk activations (its input)."""

    pretrained_name = "tail"

    def __init__(self, tail: nn.Module, head: nn.Sequential):
        super().__init__()
        self.tail, self.head = tail, head

    def last_stage_parameters(self) -> list[nn.Parameter]:
        return list(self.tail.parameters())


def build_last_stage_classifier(
    backbone: str, weights: str, num_classes: int, hidden_size: int, dropout: float
) -> LastStageClassifier:
    """A fresh head on the (pretrained) last stage of ``backbone``; the trunk is built and dropped."""
    tail = split_backbone(backbone, build_backbone(backbone, weights))[1]
    for parameter in tail.parameters():
        parameter.requires_grad = True
    head = build_head(get_backbone_spec(backbone).feature_dim, num_classes, hidden_size, dropout)
    return LastStageClassifier(tail, head)


def into_classifier(backbone_name: str, weights: str, trained: LastStageClassifier) -> ASLClassifier:
    """A complete classifier from a last stage + head trained on activations: the trained last stage
    is written into the pretrained backbone (``split_backbone`` shares its parameters)."""
    backbone = build_backbone(backbone_name, weights)
    split_backbone(backbone_name, backbone)[1].load_state_dict(trained.tail.state_dict())
    return ASLClassifier(backbone_name, backbone, trained.head, unfreeze_last_stage=True)


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: the trainable parameters and the buffers (BatchNorm statistics, small).
    The frozen backbone is left out (it is rebuilt from its weights), so a ResNet-50 checkpoint is
    about 4.5 MB instead of about 100 MB."""
    keep = {name for name, p in model.named_parameters() if p.requires_grad} | {name for name, _ in model.named_buffers()}
    return {name: tensor for name, tensor in model.state_dict().items() if name in keep}


def load_trained_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a ``trained_state`` onto a freshly built model; anything else missing is an error."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    if unexpected or set(missing) - frozen:
        raise RuntimeError(f"checkpoint does not match the model: missing {sorted(set(missing) - frozen)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")


@torch.inference_mode()
def probabilities(model: nn.Module, inputs: np.ndarray, num_classes: int, batch_size: int = 256) -> np.ndarray:
    """Softmax of ``model`` over in-memory inputs (cached features, activations or landmark rows)."""
    model.eval()
    out = [torch.softmax(model(torch.from_numpy(np.ascontiguousarray(inputs[i:i + batch_size], dtype=np.float32))), 1)
           for i in range(0, len(inputs), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, num_classes), np.float32)
