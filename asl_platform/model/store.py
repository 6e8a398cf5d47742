"""Model folders: save and load one (safetensors weights + the model card), versions that are never
overwritten with a ``latest`` pointer, and models on ``s3://``/``gs://`` copied once per node.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from asl_platform.data.storage import is_remote, split_uri, strip_file_scheme
from asl_platform.model.backbones import get_backbone_spec, load_safetensors
from asl_platform.model.card import CARD_FILE, HeadCard, ModelCard, PreprocessingCard
from asl_platform.model.classifier import ASLClassifier, build_head
from asl_platform.model.landmarks import LANDMARK_WEIGHTS_FILE, LandmarkClassifier

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"


def save_model_dir(model: ASLClassifier, directory: str | Path, classes: list[str], **card_fields) -> ModelCard:
    """Write weights (safetensors) and the model card describing them; ``card_fields`` are the
    card's other fields (version, metrics, data, config; hands and fusion for a hand-aware model, whose
    landmark model ``model.landmarks.save_landmark_weights`` writes beside the image model)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    first, last = model.head[0], model.head[-1]
    dropout = next((float(m.p) for m in model.head if hasattr(m, "p")), 0.0)
    if len(classes) != last.out_features:
        raise ValueError(f"{len(classes)} class names for a head with {last.out_features} outputs")
    card = ModelCard(
        backbone=model.backbone_name, classes=list(classes),
        preprocessing=PreprocessingCard.of(get_backbone_spec(model.backbone_name).preprocessing),
        head=HeadCard(hidden_size=first.out_features, dropout=dropout),
        unfreeze_last_stage=model.unfreeze_last_stage, **card_fields,
    )
    card.save(directory)
    return card


def load_landmark_model(directory: str | Path, card: ModelCard) -> LandmarkClassifier:
    """The landmark model of a hand-aware model folder (``card.hands``), in eval mode."""
    path = Path(directory) / LANDMARK_WEIGHTS_FILE
    if card.hands is None:
        raise ValueError(f"{directory} holds an image model only (kind {card.kind!r})")
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is a hand-aware model without its {LANDMARK_WEIGHTS_FILE}")
    model = LandmarkClassifier(len(card.classes), card.hands.head.hidden_size, card.hands.head.dropout)
    model.load_state_dict(load_safetensors(path), strict=True)
    return model.eval()


def load_model_dir(directory: str | Path) -> tuple[ASLClassifier, ModelCard]:
    """Load a model directory written by save_model_dir (or a models folder's ``latest``);
    only plain tensors are read."""
    directory = resolve_model_dir(directory)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"{directory} is not a model directory (needs {CARD_FILE} and {WEIGHTS_FILE})")
    card = ModelCard.load(directory)
    spec = get_backbone_spec(card.backbone)
    model = ASLClassifier(
        spec.name, spec.build(),
        build_head(spec.feature_dim, len(card.classes), card.head.hidden_size, card.head.dropout),
        card.unfreeze_last_stage,
    )
    model.load_state_dict(load_safetensors(weights_path), strict=True)
    model.eval()
    return model, card


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


def registered_folder(path: str | Path) -> str | Path:
    """``models:/...`` (the MLflow registry: ``tracking.resolve_registered``) -> its folder; anything else as it is."""
    if isinstance(path, str) and path.startswith("models:/"):
        from asl_platform.tracking import resolve_registered

        return resolve_registered(path)
    return path


def resolve_model_dir(path: str | Path) -> Path:
    """A local model directory: ``path`` itself, or a models folder's ``latest``; a model on
    ``s3://``/``gs://`` is first copied into the local cache (see ``fetch_model_dir``); a registered version
    (``models:/<name>/<version>``, ``models:/<name>@<alias>``) is the folder it registered."""
    path = registered_folder(path)
    if is_remote(path):
        return fetch_model_dir(str(path))
    path = Path(strip_file_scheme(path)).expanduser()
    if (path / CARD_FILE).is_file():
        return path
    pointer = path / "latest"
    if pointer.is_file():
        target = path / pointer.read_text().strip()
        if (target / CARD_FILE).is_file():
            return target
    raise FileNotFoundError(
        f"{path} is not a model directory (needs model.json and model.safetensors) "
        "nor a models folder with a 'latest' pointer"
    )


def model_location(path: str | Path) -> str:
    """Where other processes (Serve replicas, Ray Data actors, maybe on other nodes) should load the
    model from: the absolute local version folder, or for a remote model the version folder's URI.
    A models folder's ``latest`` is read once, here, so every process loads the same version even if
    ``latest`` moves while they start. A registered version is resolved here too, once."""
    path = registered_folder(path)
    if not is_remote(path):
        return str(resolve_model_dir(path).resolve())
    fs, base = split_uri(str(path).rstrip("/"))
    version = _remote_version(fs, base, str(path))
    scheme = str(path).split("://", 1)[0]
    return f"{scheme}://{version}"


def _remote_version(fs, base: str, uri: str) -> str:
    """The filesystem path of the version folder that ``base`` is or that its ``latest`` names."""
    import pyarrow.fs as pafs

    meta, pointer = fs.get_file_info([f"{base}/{CARD_FILE}", f"{base}/latest"])
    if meta.type == pafs.FileType.File:
        return base
    if pointer.type == pafs.FileType.File:
        with fs.open_input_stream(pointer.path) as stream:
            name = stream.read().decode(errors="replace").strip().strip("/")
        if name and "/" not in name and name not in (".", ".."):  # a sibling version folder, nothing else
            version = f"{base}/{name}"
            if fs.get_file_info(f"{version}/{CARD_FILE}").type == pafs.FileType.File:
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
    if WEIGHTS_FILE not in {f.base_name for f in files}:  # e.g. an upload still under way
        raise FileNotFoundError(f"{uri}: {version} has model.json but no model.safetensors (yet?)")
    with fs.open_input_stream(f"{version}/{CARD_FILE}") as stream:
        meta = stream.read()
    try:
        hand_aware = json.loads(meta).get("kind") == "hand_aware"
    except (ValueError, AttributeError):  # a broken card: ModelCard.load says what is wrong, after the copy
        hand_aware = False
    if hand_aware and LANDMARK_WEIGHTS_FILE not in {f.base_name for f in files}:
        raise FileNotFoundError(f"{uri}: {version} is a hand-aware model without {LANDMARK_WEIGHTS_FILE} (yet?)")
    scheme = uri.split("://", 1)[0]
    listing = "".join(f"{f.base_name}:{f.size}\n" for f in files)  # a re-upload of any file changes the key
    key = hashlib.sha256(f"{scheme}://{version}\n{listing}".encode() + meta).hexdigest()[:16]
    parts = version.rstrip("/").split("/")
    # <cache>/<key>/<models folder>/<version>: the folder names keep the model's name and version
    target = (cache_root or model_cache_root()) / key / (parts[-2] if len(parts) > 1 else "model") / parts[-1]
    if (target / CARD_FILE).is_file() and (target / WEIGHTS_FILE).is_file():
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
            if not (target / CARD_FILE).is_file():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target
