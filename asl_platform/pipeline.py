"""The one-command local pipeline: ingest -> features -> tune -> retrain -> evaluate -> export.

Each stage is a call into its own module; this file only sequences them, shows progress, and
writes the run's outputs (config, skipped files, trial table, model directory, summary).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator

import numpy as np

from asl_platform.config import Config
from asl_platform.data import DataError, ImageIndex, find_unreadable, list_images, stratified_split, summarize_errors
from asl_platform.features import FeatureTable, extract_features, pool_activations
from asl_platform.evaluate import TEST_SPLIT_FILE
from asl_platform.model import (
    ASLClassifier, build_backbone, get_backbone_spec, mark_latest, next_version_dir, save_model_dir, split_backbone,
    write_model_card,
)
from asl_platform.synthetic import make_smoke_dataset
from asl_platform.train import LastStageOptions, evaluate_head, retrain_head
from asl_platform.tune import format_table, plot_curves, run_search, write_results

logger = logging.getLogger(__name__)

STAGES = ("ingest", "features", "tune", "retrain", "evaluate", "export")


@dataclass
class PipelineResult:
    run_dir: Path
    model_dir: Path
    metrics: dict
    stage_seconds: dict[str, float] = field(default_factory=dict)


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
        self.seconds[name] = round(time.perf_counter() - started, 2)
        logger.info("[%d/%d] %s done in %.1fs", number, len(self.names), name, self.seconds[name])


def init_ray(cfg: Config, worker_logs: bool = False) -> None:
    """Connect to the cluster in RAY_ADDRESS (ray job submit sets it), else start a local Ray.

    Worker log lines (per-checkpoint chatter) are hidden unless asked for; errors still surface as
    exceptions with their tracebacks.
    """
    import ray

    if ray.is_initialized():
        return
    # Ray Train polls its workers at this interval; the 2 s default dominates short epochs.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=worker_logs)
    else:
        ray.init(num_cpus=cfg.run.num_cpus, include_dashboard=False, configure_logging=False, log_to_driver=worker_logs)


def _write_skipped(unreadable: dict[str, str], path: Path) -> int:
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

    @property
    def skipped(self) -> int:
        return len(self.unreadable)

    def features(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The split's pooled backbone features (what the head is tuned on)."""
        mask = np.asarray(self.index.splits) == split
        if self.pooled is not None:
            keep = mask & self.table.valid
            return self.pooled[keep], self.table.labels[keep]
        return self.table.take(mask)

    def activations(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The split's trunk activations (N, C, H, W), when extracted with ``activations=True``."""
        if self.pooled is None:
            raise ValueError("no trunk activations: prepare_data(..., activations=True) extracts them")
        return self.table.take(np.asarray(self.index.splits) == split)

    def readable(self, split: str) -> ImageIndex:
        """The split's files less the unreadable ones (already reported: no need to decode them again)."""
        return self.index.subset(split).without(self.unreadable)

    def files(self, split: str) -> tuple[list[str], list[int]]:
        subset = self.readable(split)
        return subset.paths, subset.labels


def _start_run(cfg: Config) -> Path:
    run_dir = cfg.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    if cfg.data.val_fraction <= 0:
        raise DataError("tuning and retraining select on the validation split: set data.val_fraction > 0")
    return run_dir


def prepare_data(
    cfg: Config, progress: StageProgress, run_dir: Path, worker_logs: bool, with_features: bool = True,
    activations: bool = False,
) -> PreparedData:
    """Stages ingest, then features (extract or reuse backbone features) or, for training on images,
    check (decode every file once); either way every unreadable file goes to skipped_files.csv.

    ``activations``: cache the activations before the backbone's last stage instead (to train that
    stage on them), and derive the pooled features from them by running the frozen last stage once."""
    with progress.stage("ingest", "listing images and splitting train/val/test"):
        root = cfg.data.root
        if root is None:
            root = str(make_smoke_dataset(Path(cfg.run.output_dir).resolve() / "smoke-data"))
            logger.warning("no data.root given: using the synthetic SMOKE set in %s (not real ASL images)", root)
        index = stratified_split(
            list_images(root, cfg.data.max_images_per_class, cfg.data.seed),
            cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.seed,
        )
        split_counts = {s: index.splits.count(s) for s in ("train", "val", "test")}
        logger.info("%d classes; split %s", len(index.classes), split_counts)
    init_ray(cfg, worker_logs)  # after listing, so a wrong --data fails at once
    prepared = PreparedData(root, index, split_counts)
    if with_features:
        what = "activations before its last stage" if activations else "features"
        with progress.stage("features", f"{cfg.model.backbone} {what} through a Ray Data actor pool"):
            prepared.table = extract_features(
                index, cfg.model.backbone, cfg.model.weights, Path(cfg.run.output_dir).resolve() / "cache" / "features",
                batch_size=cfg.data.batch_size, use_gpu=cfg.train.use_gpu, max_bytes=cfg.data.max_image_bytes,
                output="trunk" if activations else "features",
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
    _write_skipped(prepared.unreadable, run_dir / "skipped_files.csv")
    _require_trainable(prepared, run_dir)
    return prepared


def _require_trainable(prepared: PreparedData, run_dir: Path) -> None:
    """Refuse, before any training starts, data with no readable validation image or a class with
    no readable training image: the model could not be selected or could never predict that class."""
    by_features = prepared.table is not None
    train = prepared.features("train")[1] if by_features else np.asarray(prepared.files("train")[1])
    val = prepared.features("val")[1] if by_features else prepared.files("val")[1]
    if len(val) == 0:
        raise DataError(f"no readable validation images (split sizes {prepared.split_counts}); "
                        "add images or raise data.val_fraction")
    untrained = [name for i, name in enumerate(prepared.index.classes) if not np.any(train == i)]
    if untrained:
        raise DataError(f"no readable training images for class(es) {', '.join(untrained)}; see {run_dir / 'skipped_files.csv'}")


def search(cfg: Config, prepared: PreparedData, progress: StageProgress, run_dir: Path, resume: bool = False):
    """Stage tune: the ASHA search; writes trials.csv/json, best_config.yaml and curves.png."""
    with progress.stage("tune", f"ASHA search, {cfg.tune.num_samples} trials ({cfg.tune.mode} mode)"):
        if cfg.tune.mode == "images":
            data = {
                "train_files": prepared.files("train"), "val_files": prepared.files("val"),
                "backbone": cfg.model.backbone, "weights": cfg.model.weights,
                "unfreeze_last_stage": cfg.model.unfreeze_last_stage,
            }
        else:
            data = {"train": prepared.features("train"), "val": prepared.features("val")}
        data["num_classes"] = len(prepared.index.classes)
        best_hp, rows, results = run_search(data, cfg.tune, cfg.storage_path, "tune", resume=resume)
        best_config_path = write_results(rows, best_hp, cfg, run_dir / "tune")
        plot_curves(results, run_dir / "tune" / "curves.png")
        logger.info("trials (best first):\n%s", format_table(rows))
        logger.info("best hyperparameters: %s -> %s", best_hp, best_config_path)
    return best_hp, rows, best_config_path


def run_tune(cfg: Config, resume: bool = False, worker_logs: bool = False) -> tuple[Path, list[dict]]:
    """`asl-platform tune`: ingest, features (when used), and the search; returns best_config.yaml."""
    run_dir = _start_run(cfg)
    stages = ("ingest", "features", "tune") if cfg.tune.mode == "features" else ("ingest", "check", "tune")
    progress = StageProgress(stages)
    prepared = prepare_data(cfg, progress, run_dir, worker_logs, with_features=cfg.tune.mode == "features")
    _, rows, best_config_path = search(cfg, prepared, progress, run_dir, resume)
    return best_config_path, rows


def run_pipeline(cfg: Config, worker_logs: bool = False) -> PipelineResult:
    """Run every stage on ``cfg``; with no data root, on the built-in synthetic smoke set."""
    run_dir = _start_run(cfg)
    last_stage = None
    if cfg.model.unfreeze_last_stage:
        last_stage = LastStageOptions(
            cfg.model.backbone, cfg.model.weights, lr_factor=cfg.train.last_stage_lr_factor,
            label_smoothing=cfg.train.last_stage_label_smoothing, feature_noise=cfg.train.last_stage_feature_noise,
            patience=cfg.train.early_stopping_patience, torch_threads=cfg.train.torch_threads,
        )
        logger.info(
            "model.unfreeze_last_stage: caching the %s activations before its last stage; the head is tuned on "
            "pooled features from them, then the last stage + head are retrained on them (last stage lr = "
            "head lr x %g, label smoothing %g, feature noise %g, early stopping after %d epochs without a better "
            "val loss)", cfg.model.backbone, last_stage.lr_factor, last_stage.label_smoothing,
            last_stage.feature_noise, last_stage.patience,
        )
    progress = StageProgress(STAGES)
    prepared = prepare_data(cfg, progress, run_dir, worker_logs, activations=last_stage is not None)
    best_hp, _, _ = search(cfg, prepared, progress, run_dir)
    arrays = prepared.activations if last_stage else prepared.features
    train, val, test = (arrays(s) for s in ("train", "val", "test"))
    classes = prepared.index.classes

    what = ("last stage + head on the cached activations" if last_stage else "head on the cached features")
    with progress.stage("retrain", f"Ray Train TorchTrainer, {what}, {'up to ' if last_stage else ''}"
                                   f"{cfg.train.epochs} epochs, best config"):
        # A unique name per invocation: a re-run must never pick up an old run's checkpoints.
        head, retrain_metrics = retrain_head(
            train, val, len(classes), best_hp, cfg.train.epochs, cfg.storage_path,
            f"retrain-{datetime.now():%Y%m%d-%H%M%S-%f}",
            num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu, seed=cfg.train.seed,
            last_stage=last_stage,
        )

    with progress.stage("evaluate", "held-out test split"):
        test_loss, test_accuracy = evaluate_head(head, *test)
        metrics = {
            "test_accuracy": test_accuracy, "test_loss": test_loss, "test_images": int(len(test[1])),
            "val_accuracy": retrain_metrics["val_accuracy"], "val_loss": retrain_metrics["val_loss"],
            "best_epoch": retrain_metrics["epoch"], "skipped_files": prepared.skipped,
        }
        if last_stage:
            metrics["epochs_run"] = retrain_metrics["epochs_run"]

    with progress.stage("export", "writing the model directory"):
        backbone = build_backbone(cfg.model.backbone, cfg.model.weights)
        extra = {}
        if last_stage:  # the trained last stage goes into the backbone (shared parameters), the rest stays pretrained
            split_backbone(cfg.model.backbone, backbone)[1].load_state_dict(head.tail.state_dict())
            head = head.head
            extra["last_stage"] = asdict(last_stage)
        classifier = ASLClassifier(cfg.model.backbone, backbone, head, unfreeze_last_stage=last_stage is not None)
        # Versioned like `train`'s exports, so serve/predict-batch/evaluate take <models>/<run.name> (its latest).
        model_dir = _export_version(cfg, classifier, prepared, {
            "metrics": metrics,
            "data": {"root": prepared.root, "layout": prepared.index.layout, "split": prepared.split_counts,
                     "smoke_set": cfg.data.root is None},
            "hyperparameters": asdict(best_hp),
            **extra,
        })
        write_model_card(model_dir)
        mark_latest(model_dir)  # last: `latest` only ever names a complete model

    result = PipelineResult(run_dir, model_dir, metrics, progress.seconds)
    (run_dir / "summary.json").write_text(json.dumps(
        {"model_dir": str(model_dir), "metrics": metrics, "stage_seconds": progress.seconds}, indent=2
    ))
    return result


def format_summary(result: PipelineResult, smoke: bool) -> str:
    m = result.metrics
    lines = [
        "",
        "=" * 60,
        "asl-platform pipeline finished" + ("  (SYNTHETIC SMOKE SET - not real ASL accuracy)" if smoke else ""),
        f"  test accuracy : {m['test_accuracy']:.2%} on {m['test_images']} images (loss {m['test_loss']:.4f})",
        f"  val accuracy  : {m['val_accuracy']:.2%} (best epoch {m['best_epoch']})",
        f"  skipped files : {m['skipped_files']}",
        f"  model         : {result.model_dir}",
        f"  run outputs   : {result.run_dir}",
        "  stage times   : " + ", ".join(f"{k} {v:.0f}s" for k, v in result.stage_seconds.items()),
        "=" * 60,
    ]
    return "\n".join(lines)


TRAIN_STAGES = ("ingest", "check", "train", "export", "evaluate", "finalise")


def _export_version(cfg: Config, model: ASLClassifier, prepared: PreparedData, extra: dict) -> Path:
    """Claim ``<models>/<run.name>/v<N>`` and write the model, its config and its exact held-out test
    files (so `evaluate --split test` never re-derives the split). ``latest`` is moved by the caller,
    last, once everything else in the folder is written."""
    version_dir = next_version_dir(cfg.models_dir.resolve())
    save_model_dir(model, version_dir, prepared.index.classes, {
        "version": version_dir.name, "weights": cfg.model.weights, **extra, "config": cfg.model_dump(mode="json"),
    })
    (version_dir / "config.yaml").write_text(cfg.to_yaml())
    (version_dir / TEST_SPLIT_FILE).write_text("\n".join(prepared.index.subset("test").paths) + "\n")
    return version_dir


def run_train(cfg: Config, worker_logs: bool = False) -> dict:
    """`asl-platform train`: Ray Train on the image folders, then an honest evaluation (held-out test
    split, and a cross-domain folder when configured), a versioned export and a job summary."""
    from asl_platform.evaluate import evaluate_folder
    from asl_platform.train import train_on_images, write_tensorboard

    started = time.perf_counter()
    run_dir = _start_run(cfg)
    progress = StageProgress(TRAIN_STAGES)
    prepared = prepare_data(cfg, progress, run_dir, worker_logs, with_features=False)
    index, classes = prepared.index, prepared.index.classes
    if cfg.data.cross_domain_root:  # check it now, not after an hour of training
        list_images(cfg.data.cross_domain_root)
    name = f"train-{datetime.now():%Y%m%d-%H%M%S-%f}"

    with progress.stage("train", f"Ray Train TorchTrainer, {cfg.train.num_workers} worker(s), up to {cfg.train.epochs} epochs"):
        trained = train_on_images(
            prepared.readable("train"), prepared.readable("val"), classes, cfg.model, cfg.train, cfg.data,
            cfg.storage_path, name,
        )

    with progress.stage("export", "versioned model directory"):
        version_dir = _export_version(cfg, trained.model, prepared, {
            "metrics": {"val_loss": trained.best_metrics["val_loss"], "val_accuracy": trained.best_metrics["val_accuracy"],
                        "best_epoch": trained.best_metrics["epoch"], "epochs_run": len(trained.history)},
            "data": {"root": prepared.root, "layout": index.layout, "split": prepared.split_counts,
                     "skipped_files": prepared.skipped, "smoke_set": cfg.data.root is None},
            "training": {"checkpoint": trained.checkpoint_path},
        })

    with progress.stage("evaluate", "held-out test split" + (" and cross-domain folder" if cfg.data.cross_domain_root else "")):
        on_gpu = {"use_gpu": cfg.train.use_gpu}  # where training ran, inference runs too
        reports = {"test": evaluate_folder(version_dir, prepared.root, split="test", output_dir=version_dir / "eval",
                                           name="test", **on_gpu)}
        if cfg.data.cross_domain_root:
            reports["cross_domain"] = evaluate_folder(
                version_dir, cfg.data.cross_domain_root, split="all", output_dir=version_dir / "eval", name="cross_domain",
                **on_gpu,
            )
        meta_path = version_dir / "model.json"
        meta = json.loads(meta_path.read_text())
        for prefix, report in reports.items():
            meta["metrics"].update({f"{prefix}_accuracy": report["accuracy"], f"{prefix}_loss": report["loss"],
                                    f"{prefix}_macro_f1": report["macro_f1"], f"{prefix}_images": report["images"]})
        meta_path.write_text(json.dumps(meta, indent=2))

    with progress.stage("finalise", "model card, TensorBoard logs"):
        write_model_card(version_dir)
        write_tensorboard(trained.history, run_dir / "tensorboard" / name)
    summary = _job_summary(progress, trained.history, meta, version_dir, time.perf_counter() - started)
    summary["skipped_files"] = prepared.skipped  # listed by path in <run dir>/skipped_files.csv
    for path in (run_dir / "job_summary.json", version_dir / "job_summary.json"):
        path.write_text(json.dumps(summary, indent=2))
    (run_dir / "job_summary.md").write_text(_job_summary_markdown(summary))
    mark_latest(version_dir)  # last: `latest` only ever names a complete model
    return summary


def _job_summary(progress: StageProgress, history: list[dict], meta: dict, version_dir: Path, total: float) -> dict:
    """Like the original profiler report: where the time went, throughput, peak memory."""
    import resource

    train_seconds = sum(row.get("train_seconds", 0.0) for row in history)
    train_images = sum(row.get("train_images", 0) for row in history)
    return {
        "finished": datetime.now().isoformat(timespec="seconds"),
        "total_seconds": round(total, 1),
        "stage_seconds": dict(progress.seconds),
        "training_loop_seconds": round(train_seconds, 1),
        "data_wait_seconds": round(sum(row.get("data_wait_seconds", 0.0) for row in history), 1),
        "train_images_per_second": round(train_images / train_seconds, 1) if train_seconds else None,
        "epochs_run": len(history),
        "epochs": [int(row["epoch"]) for row in history],
        "peak_worker_rss_mb": round(max((row.get("peak_rss_mb", 0.0) for row in history), default=0.0), 1),
        "peak_gpu_mb": round(max((row.get("peak_gpu_mb", 0.0) for row in history), default=0.0), 1),
        "peak_driver_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "metrics": meta["metrics"],
        "model_dir": str(version_dir),
    }


def _job_summary_markdown(summary: dict) -> str:
    lines = ["# Training job summary", "", f"Finished {summary['finished']}, total {summary['total_seconds']} s.", "",
             "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds} |" for stage, seconds in summary["stage_seconds"].items()]
    lines += ["", f"- training loop: {summary['training_loop_seconds']} s ({summary['epochs_run']} epochs), "
              f"waiting for data {summary['data_wait_seconds']} s",
              f"- throughput: {summary['train_images_per_second']} training images/s",
              f"- peak memory: worker {summary['peak_worker_rss_mb']} MB RSS, driver {summary['peak_driver_rss_mb']} MB"
              + (f", GPU {summary['peak_gpu_mb']} MB" if summary["peak_gpu_mb"] else ""),
              f"- unreadable files skipped: {summary.get('skipped_files', 0)} (listed in skipped_files.csv)",
              f"- model: {summary['model_dir']}", "", "## Metrics", ""]
    lines += [f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}" for k, v in summary["metrics"].items()]
    return "\n".join(lines) + "\n"
