"""The stages every training command starts with: list and split the images, then extract
(or reuse) cached backbone features, or decode every file once; every unreadable file is listed.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from asl_platform.config import Config, ConfigError, DataConfig
from asl_platform.data.listing import ImageIndex, list_sources
from asl_platform.data.people import Folds, group_counts, leave_one_group_out, validates_on_people
from asl_platform.data.reading import find_unreadable, summarize_errors
from asl_platform.data.synthetic import make_smoke_dataset
from asl_platform.errors import DataError
from asl_platform.hands import DetectionSettings, HandTable
from asl_platform.model import ModelCard, get_backbone_spec
from asl_platform.runtime import init_ray
from asl_platform.stages.features import FeatureTable, extract_features, extraction_runtime, pool_activations
from asl_platform.stages.hands import detect_hands

logger = logging.getLogger(__name__)

TEST_SPLIT_FILE = "test_split.txt"  # beside a model: its held-out test files, one path a line


class StageProgress:
    """Logs '[n/N] stage' on entry and its duration on exit, so long runs show where they are."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        number = self.names.index(name) + 1
        logger.info("[%d/%d] %s: %s", number, len(self.names), name, what)
        started = time.perf_counter()
        yield
        seconds = round(time.perf_counter() - started, 2)
        self.seconds[name] = round(self.seconds.get(name, 0.0) + seconds, 2)  # a stage may run twice (two searches)
        logger.info("[%d/%d] %s done in %.1fs", number, len(self.names), name, seconds)


def write_skipped(unreadable: dict[str, str], path: Path) -> int:
    """``skipped_files.csv`` (path, error) and a log line with the count and the first few: every
    command that trains says which files it could not use, by path."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "error"])
        writer.writerows(unreadable.items())
    (logger.warning if unreadable else logger.info)(summarize_errors(unreadable.keys(), unreadable.values()))
    return len(unreadable)


@dataclass
class PreparedData:
    """The listed, split and (in features mode) featurised dataset that the later stages share."""

    root: str
    index: ImageIndex
    split_counts: dict[str, int]
    table: FeatureTable | None = None
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> error, as in skipped_files.csv
    pooled: np.ndarray | None = None  # when ``table`` holds trunk activations: the frozen backbone's features
    hands: HandTable | None = None  # model.kind hand_aware: MediaPipe hands of every listed file
    sources: list[dict] = field(default_factory=list)  # several data roots: each one's images and split
    balance_sources: bool = False  # data.balance_sources, with several folders
    inputs: str | None = None  # pipeline: ``inputs_key`` of what the model is made from (recorded in its card)
    cross_table: FeatureTable | None = None  # pipeline: the cross-domain folder's, from the same stages (export scores it)
    cross_hands: HandTable | None = None
    people: bool = False  # choices are made on held-out groups of people (``data.people``), not a validation split

    @property
    def skipped(self) -> int:
        return len(self.unreadable)

    def rows(self, split: str, kind: str = "features") -> np.ndarray:
        """Which listed files a split's arrays of ``kind`` hold: readable ones, and for ``landmarks``
        those with a hand found."""
        mask = np.asarray(self.index.splits) == split
        if kind == "landmarks":
            return mask & self.hands.found & self.hands.valid
        return mask & self.table.valid

    def features(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The split's pooled backbone features (what the head is tuned on)."""
        keep = self.rows(split)
        return (self.pooled if self.pooled is not None else self.table.features)[keep], self.table.labels[keep]

    def activations(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The split's trunk activations (N, C, H, W), when extracted with ``activations=True``."""
        if self.pooled is None:
            raise ValueError("no trunk activations: prepare_data(..., activations=True) extracts them")
        keep = self.rows(split)
        return self.table.features[keep], self.table.labels[keep]

    def landmarks(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The split's landmark rows (``hands.landmark_inputs``) and labels, of images with a hand found."""
        keep = self.rows(split, "landmarks")
        return self.hands.inputs(keep), self.hands.labels[keep]

    def source_weights(self, split: str, kind: str = "features") -> np.ndarray | None:
        """One weight per row of the split's arrays of ``kind`` (``weights_of``)."""
        return self.weights_of(self.rows(split, kind))

    def weights_of(self, rows: np.ndarray) -> np.ndarray | None:
        """One weight per selected file: 1 / the selected files of its folder, so that every folder weighs
        the same (``data.balance_sources``); None with one folder or balancing off."""
        if not self.balance_sources or len(self.sources) < 2:
            return None
        source = np.asarray(self.index.sources)[rows]
        return 1.0 / np.bincount(source, minlength=len(self.sources))[source]

    def folds(self, kind: str = "features") -> Folds:
        """Each group held out in turn (``data.people``), over the rows of the training arrays of ``kind``
        (``features("train")``, ``landmarks("train")``): what a people-validated search and retrain train on."""
        rows = self.rows("train", kind)
        return leave_one_group_out(np.asarray(self.index.groups)[rows], np.asarray(self.index.labels)[rows])

    def people_weights(self, rows: np.ndarray) -> np.ndarray:
        """One weight per selected file: 1 / the selected files of its group, so that every person (or folder
        of people) weighs the same in a score, as the cross-domain sets are reported (the mean person)."""
        groups = np.unique(np.asarray(self.index.groups)[rows], return_inverse=True)[1]
        return 1.0 / np.bincount(groups)[groups]

    def readable(self, split: str) -> ImageIndex:
        """The split's files less the unreadable ones (already reported: no need to decode them again)."""
        return self.index.subset(split).without(self.unreadable)

    def files(self, split: str) -> tuple[list[str], list[int]]:
        subset = self.readable(split)
        return subset.paths, subset.labels


def start_run(cfg: Config) -> Path:
    run_dir = cfg.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    if cfg.data.val_fraction <= 0:
        raise ConfigError("data.val_fraction: tuning and training select on the validation split: set it > 0")
    return run_dir


def ingest(cfg: Config, progress: StageProgress, command: str = "pipeline") -> PreparedData:
    """Stage ingest: every image of the training folders listed (with its size and mtime), each file's group
    (``data.people``) and the split: train/test where the run chooses on held-out people, train/val/test
    where it chooses on the validation split. ``command``: what runs; only the pipeline holds people out."""
    with progress.stage("ingest", "listing images, finding whose they are, splitting"):
        roots = cfg.data.roots
        if roots is None:
            roots = [str(make_smoke_dataset(Path(cfg.run.output_dir).resolve() / "smoke-data"))]
            logger.warning("no data.root given: using the synthetic SMOKE set in %s (not real ASL images)", roots[0])
        index, sources = list_sources(roots, cfg.data.max_images_per_class, cfg.data.seed,
                                      cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.validation,
                                      cfg.data.person_pattern)
        people = validates_on_people(cfg.data.validation, index.groups)
        _check_validation(cfg, command, people, index)
        split_counts = {s: index.splits.count(s) for s in ("train", "val", "test")}
        logger.info("%d classes; split %s%s", len(index.classes), split_counts,
                    "".join(f"; {s['root']}: {s['split']}" for s in sources) if len(sources) > 1 else "")
        counts = group_counts(index.groups)
        if people:
            logger.info("choosing on people held out: %d groups, each held out in turn (%s)", len(counts),
                        ", ".join(f"{name} {n}" for name, n in counts.items()))
        elif cfg.data.validation == "people":
            logger.warning("data.validation=people, but every training file is of one group (%s: no file name names "
                           "a person, data.person_pattern, and one folder): choosing on the random validation split "
                           "of the same people instead", next(iter(counts)))
    return PreparedData(roots[0] if len(roots) == 1 else index.root, index, split_counts,
                        sources=sources if len(sources) > 1 else [], balance_sources=cfg.data.balance_sources,
                        people=people)


def _check_validation(cfg: Config, command: str, people: bool, index: ImageIndex) -> None:
    """Refuse what would not do what it says: another command holding people out (only the pipeline does), or
    a validation split asked for (``data.val_fraction`` changed) where none is drawn."""
    if not people:
        return
    groups = len(set(index.groups))
    if command != "pipeline":
        raise ConfigError(f"data.validation=people: the training folders hold {groups} groups of people, and "
                          f"asl-platform {command} chooses on one validation split of the same people; asl-platform "
                          "pipeline holds each group out in turn, or set --set data.validation=split")
    if cfg.data.val_fraction != DataConfig().val_fraction:
        raise ConfigError(f"data.val_fraction={cfg.data.val_fraction} has no effect: with data.validation=people and "
                          f"{groups} groups of people no validation split is drawn (each group is held out in turn); "
                          "drop the key, or set data.validation=split")


def inputs_key(cfg: Config, index: ImageIndex, cross_index: ImageIndex | None) -> str:
    """A digest of everything a pipeline's model is made from: the config but ``serve`` and ``run`` (where
    outputs go, how to serve), every training file (path, split, size, mtime) and cross-domain file, the
    package's code and the libraries' versions. Equal digests: a re-run would train the same thing again."""
    import hashlib
    import importlib.metadata
    import json

    digest = hashlib.sha256()
    config = cfg.model_dump(mode="json", exclude={"serve", "run", "tracking"})
    versions = {}
    for name in ("torch", "torchvision", "ray", "mediapipe", "onnxruntime", "numpy", "pillow"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    digest.update(json.dumps({"config": config, "versions": versions}, sort_keys=True).encode())
    for listing in (index, cross_index or ImageIndex.of_paths([])):
        for path, stamp, split in zip(listing.paths, listing.stamps or [""] * len(listing), listing.splits or [""] * len(listing)):
            digest.update(f"{path}\0{stamp}\0{split}\n".encode())
        digest.update(b"--\n")
    package = Path(__file__).resolve().parents[1]  # asl_platform/
    for source in sorted(package.rglob("*.py")):
        digest.update(str(source.relative_to(package)).encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def prepare_data(
    cfg: Config, progress: StageProgress, run_dir: Path, with_features: bool = True,
    activations: bool = False, cross_index: ImageIndex | None = None, prepared: PreparedData | None = None,
    command: str = "pipeline",
) -> PreparedData:
    """Stages ingest (unless ``prepared`` is its result already), then features (extract or reuse backbone
    features) or, for training on images, check (decode every file once); either way every unreadable file
    goes to skipped_files.csv.

    ``activations``: cache the activations before the backbone's last stage instead (to train that
    stage on them), and derive the pooled features from them by running the frozen last stage once.
    ``cross_index``: the cross-domain folder's features and hands are computed in the same stages (into
    the per-file caches, and kept for the export to score), so each stage's time is all of its work."""
    prepared = prepared or ingest(cfg, progress, command)
    index = prepared.index
    init_ray(cfg)  # after listing, so a wrong --data fails at once
    if with_features:
        what = "activations before its last stage" if activations else "features"
        also = " (and the cross-domain folder's)" if cross_index is not None else ""
        with progress.stage("features", f"{cfg.model.backbone} {what}{also} through a Ray Data actor pool "
                                        f"({extraction_runtime(cfg.inference, cfg.train.use_gpu)})"):
            prepared.table = extract_features(
                index, cfg.model.backbone, cfg.model.weights, features_cache(cfg),
                batch_size=cfg.data.batch_size, use_gpu=cfg.train.use_gpu, max_bytes=cfg.data.max_image_bytes,
                output="trunk" if activations else "features", inference=cfg.inference,
            )
            if cross_index is not None:
                prepared.cross_table = extract_features(
                    cross_index, cfg.model.backbone, cfg.model.weights, features_cache(cfg),
                    batch_size=cfg.data.batch_size, use_gpu=cfg.train.use_gpu, max_bytes=cfg.data.max_image_bytes,
                    output="trunk" if activations else "features", inference=cfg.inference,
                )
            if activations:
                started = time.perf_counter()
                prepared.pooled = pool_activations(prepared.table.features, cfg.model.backbone, cfg.model.weights)
                logger.info("activations %s per image; pooled features for tuning from the frozen last stage in %.1fs",
                            "x".join(map(str, prepared.table.features.shape[1:])), time.perf_counter() - started)
        prepared.unreadable = {str(p): str(e) for p, e in zip(prepared.table.paths, prepared.table.errors) if e}
    else:
        with progress.stage("check", "decoding every file once to list the unreadable ones"):
            draft = get_backbone_spec(cfg.model.backbone).preprocessing.image_size  # as training decodes
            prepared.unreadable = find_unreadable(index.paths, cfg.data.max_image_bytes, draft, cfg.data.batch_size)
    if cfg.model.kind == "hand_aware":
        with progress.stage("hands", "MediaPipe Hands through a Ray Data actor pool"
                            + (", the cross-domain folder too" if cross_index is not None else "")):
            prepared.hands = detect_hands(index, DetectionSettings.of(cfg.hands), hands_cache(cfg), cfg.data.batch_size,
                                          max_bytes=cfg.data.max_image_bytes)
            if cross_index is not None:
                prepared.cross_hands = detect_hands(cross_index, DetectionSettings.of(cfg.hands), hands_cache(cfg),
                                                    cfg.data.batch_size, max_bytes=cfg.data.max_image_bytes)
            for path, error in zip(prepared.hands.paths, prepared.hands.errors):  # e.g. changed since the features
                if error and str(path) not in prepared.unreadable:
                    prepared.unreadable[str(path)] = f"hand detection: {error}"
            _require_hands(prepared)
    write_skipped(prepared.unreadable, run_dir / "skipped_files.csv")
    _require_trainable(prepared, run_dir)
    return prepared


def features_cache(cfg: Config) -> Path:
    return Path(cfg.run.output_dir).resolve() / "cache" / "features"


def hands_cache(cfg: Config) -> Path:
    return Path(cfg.run.output_dir).resolve() / "cache" / "hands"


def _require_hands(prepared: PreparedData) -> None:
    """A landmark model needs hands to learn from and to be selected on."""
    splits = ("train",) if prepared.people else ("train", "val")  # held-out people: the groups are the validation
    found = {split: int(len(prepared.landmarks(split)[1])) for split in splits}
    rates = prepared.hands.found[prepared.hands.valid]
    logger.info("hands found in %.1f%% of readable images (%s with a hand)", 100 * rates.mean() if len(rates) else 0.0,
                ", ".join(f"{split} {n}" for split, n in found.items()))
    empty = [split for split, n in found.items() if not n]
    if empty:
        raise DataError(f"model.kind=hand_aware: MediaPipe found no hand in the {empty[0]} split; it needs photos of "
                        "hands (the synthetic smoke set has none): use model.kind=image")
    if prepared.people and len(prepared.folds("landmarks")) < 2:
        raise DataError("model.kind=hand_aware with data.validation=people: fewer than two groups of people have a hand "
                        "found in their training images, so none can be held out; add photos of hands, or set "
                        "data.validation=split")


def _require_trainable(prepared: PreparedData, run_dir: Path) -> None:
    """Refuse, before any training starts, data with no readable validation image or a class with
    no readable training image: the model could not be selected or could never predict that class."""
    by_features = prepared.table is not None
    train = prepared.features("train")[1] if by_features else np.asarray(prepared.files("train")[1])
    if prepared.people:  # the groups are the validation: two of them must have something to score
        if len(prepared.folds()) < 2:
            raise DataError("data.validation=people: fewer than two groups of people have readable training images of "
                            "letters the others sign too, so none can be held out; set data.validation=split")
    elif len(prepared.features("val")[1] if by_features else prepared.files("val")[1]) == 0:
        raise DataError(f"no readable validation images (split sizes {prepared.split_counts}); "
                        "add images or raise data.val_fraction")
    untrained = [name for i, name in enumerate(prepared.index.classes) if not np.any(train == i)]
    if untrained:
        raise DataError(f"no readable training images for class(es) {', '.join(untrained)}; see {run_dir / 'skipped_files.csv'}")


def data_settings(card: ModelCard) -> dict:
    """The training run's data section as its card records it (for the identical split), with today's
    defaults for what an older card does not record."""
    section = dict((card.config or {}).get("data") or {})
    section.setdefault("validation", "split")  # cards before data.validation chose on the validation split
    defaults = DataConfig()
    keys = ("val_fraction", "test_fraction", "seed", "max_images_per_class", "batch_size", "max_image_bytes",
            "validation", "person_pattern")
    return {key: section.get(key) if section.get(key) is not None else getattr(defaults, key) for key in keys}


def training_split(card: ModelCard, model_dir: Path, roots: list[str]) -> ImageIndex:
    """``roots`` listed and split exactly as training split them: the seeded split of the card's data
    settings, then the test files saved with the model (``TEST_SPLIT_FILE``) where there is that list,
    so files added later cannot leak into the test split; a file the seeded split put in test that is
    not in the saved list goes to train."""
    settings = data_settings(card)
    listing, _ = list_sources(roots, settings["max_images_per_class"], settings["seed"], settings["val_fraction"],
                              settings["test_fraction"], settings["validation"], settings["person_pattern"])
    saved = Path(model_dir) / TEST_SPLIT_FILE
    if not saved.is_file():
        return listing
    held_out = set(saved.read_text().splitlines())
    if not held_out & set(listing.paths):  # e.g. the data moved: the seeded split is all there is
        logger.warning("none of %s's saved test files are under %s; recomputing the seeded split",
                       model_dir, ", ".join(roots))
        return listing
    listing.splits = ["test" if path in held_out else ("train" if split == "test" else split)
                      for path, split in zip(listing.paths, listing.splits)]
    missing = len(held_out) - listing.splits.count("test")
    if missing:
        logger.warning("%d held-out test file(s) of the model are no longer under %s", missing, ", ".join(roots))
    return listing
