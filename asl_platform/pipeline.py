"""The commands that train: ``pipeline`` (ingest -> features -> tune -> retrain -> evaluate -> export),
``tune`` (the search alone) and ``train`` (Ray Train on the images, evaluate, export).

Each stage is a call into its own module; this file only sequences them, shows progress, and writes
the run's outputs (config, skipped files, trial table, model folder, summary).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch

from asl_platform.config import Config, ConfigError
from asl_platform.evaluate import TEST_SPLIT_FILE, evaluate_folder
from asl_platform.data import ImageIndex, list_images
from asl_platform.model import (
    ASLClassifier, DataCard, ModelCard, build_backbone, into_classifier, mark_latest, next_version_dir, save_model_dir,
    write_readme,
)
from asl_platform.model.card import OnnxCard
from asl_platform.model.landmarks import save_landmark_weights
from asl_platform.onnx_export import export_onnx, labelled
from asl_platform.prepare import PreparedData, StageProgress, prepare_data, start_run
from asl_platform.selection import (
    confidence_card, export_shapes, make_hand_aware, probabilities, score_cross_domain, split_answers,
    validation_set,
)
from asl_platform.training import setup
from asl_platform.training.loop import evaluate
from asl_platform.training.search import (
    check_bounds, check_resumable, format_table, plot_curves, run_search, searched_values, write_results,
)
from asl_platform.training.sources import ArrayBatches, evaluation_batch_size
from asl_platform.training.trainer import run_training, write_tensorboard

logger = logging.getLogger(__name__)

STAGES = ("ingest", "features", "tune", "retrain", "evaluate", "export")
HAND_AWARE_STAGES = ("ingest", "features", "hands", "tune", "retrain", "evaluate", "export")
TRAIN_STAGES = ("ingest", "check", "train", "export", "evaluate", "finalise")


@dataclass
class PipelineResult:
    run_dir: Path
    model_dir: Path
    metrics: dict
    stage_seconds: dict[str, float] = field(default_factory=dict)


def search(cfg: Config, prepared: PreparedData, progress: StageProgress, run_dir: Path,
           resume: bool = False, kind: setup.Kind | None = None) -> tuple[Config, list[dict], Path]:
    """Stage tune: the ASHA search; writes trials.csv/json, best_config.yaml and curves.png (under
    ``tune/``, or ``tune-landmarks/`` for the landmark model)."""
    kind = kind or ("images" if cfg.tune.mode == "images" else "features")
    name = "tune-landmarks" if kind == "landmarks" else "tune"
    what = "the landmark model" if kind == "landmarks" else f"the image model ({cfg.tune.mode} mode)"
    with progress.stage("tune", f"ASHA search, {cfg.tune.num_samples} trials, {what}"):
        if kind == "images":
            data = {"kind": "images", "train_files": prepared.files("train"), "val_files": prepared.files("val")}
        elif kind == "landmarks":
            data = {"kind": "landmarks", "train": prepared.landmarks("train"), "val": prepared.landmarks("val"),
                    "train_weights": prepared.source_weights("train", "landmarks")}
        else:
            data = {"kind": "features", "train": prepared.features("train"), "val": prepared.features("val"),
                    "train_weights": prepared.source_weights("train")}
        data["num_classes"] = len(prepared.index.classes)
        best, rows, results = run_search(data, cfg, name, resume=resume)
        best_config_path = write_results(rows, best, run_dir / name)
        plot_curves(results, run_dir / name / "curves.png")
        logger.info("trials (best first):\n%s", format_table(rows))
        logger.info("best hyperparameters: %s -> %s", searched_values(best.model_dump()), best_config_path)
    return best, rows, best_config_path


def run_tune(cfg: Config, resume: bool = False) -> tuple[Path, list[dict]]:
    """`asl-platform tune`: ingest, features (when used), and the search; returns best_config.yaml."""
    _image_model_only(cfg, "tune")
    check_bounds(cfg)  # before any work
    if resume:
        check_resumable(cfg)
    run_dir = start_run(cfg)
    stages = ("ingest", "features", "tune") if cfg.tune.mode == "features" else ("ingest", "check", "tune")
    progress = StageProgress(stages)
    prepared = prepare_data(cfg, progress, run_dir, with_features=cfg.tune.mode == "features")
    _, rows, best_config_path = search(cfg, prepared, progress, run_dir, resume)
    return best_config_path, rows


def _image_model_only(cfg: Config, command: str) -> None:
    if cfg.model.kind != "image":
        raise ConfigError(f"model.kind={cfg.model.kind}: asl-platform {command} trains the image model only; "
                          "asl-platform pipeline builds hand-aware models")


def _export_version(cfg: Config, model: ASLClassifier, prepared: PreparedData, **card_fields) -> tuple[Path, ModelCard]:
    """Claim ``<models>/<run.name>/v<N>`` and write the model, its config and its exact held-out test
    files (so `evaluate --split test` never re-derives the split). ``latest`` is moved by the caller,
    last, once everything else in the folder is written."""
    version_dir = next_version_dir(cfg.models_dir.resolve())
    data = DataCard(root=prepared.root if not prepared.sources else None, sources=prepared.sources,
                    layout=prepared.index.layout, split=prepared.split_counts,
                    smoke_set=cfg.data.root is None, skipped_files=prepared.skipped)
    card = save_model_dir(model, version_dir, prepared.index.classes, version=version_dir.name,
                          weights=cfg.model.weights, data=data, config=cfg.model_dump(mode="json"), **card_fields)
    (version_dir / "config.yaml").write_text(cfg.to_yaml())
    (version_dir / TEST_SPLIT_FILE).write_text("\n".join(prepared.index.subset("test").paths) + "\n")
    return version_dir, card


def export_runtimes(cfg: Config, model_dir: Path, model: ASLClassifier, card: ModelCard, prepared: PreparedData,
                    cross_index: ImageIndex | None) -> OnnxCard:
    """``model.onnx`` and ``model.int8.onnx`` beside the weights, scored against torch on the held-out
    test split and the cross-domain folder (``onnx_export``)."""
    sets = {"test": labelled(prepared.readable("test"), card.classes)}
    if cross_index is not None:
        sets["cross_domain"] = labelled(cross_index, card.classes)
    return export_onnx(model_dir, model, card, prepared.readable("train").paths, sets, cfg.inference,
                       batch_size=cfg.data.batch_size, max_bytes=cfg.data.max_image_bytes, seed=cfg.data.seed)


def run_pipeline(cfg: Config) -> PipelineResult:
    """Run every stage on ``cfg``; with no data root, on the built-in synthetic smoke set."""
    kind: setup.Kind = "activations" if cfg.model.unfreeze_last_stage else "features"
    hand_aware = cfg.model.kind == "hand_aware"
    setup.check_train_keys(cfg, kind, searched=True)  # before any work: no setting may silently do nothing
    check_bounds(cfg)
    if hand_aware and cfg.tune.mode == "images":
        raise ConfigError("model.kind=hand_aware tunes the image head on cached features: use tune.mode=features")
    run_dir = start_run(cfg)
    cross_index = list_images(cfg.data.cross_domain_root) if cfg.data.cross_domain_root else None  # fail now, not later
    if kind == "activations":
        logger.info(
            "model.unfreeze_last_stage: caching the %s activations before its last stage; the head is tuned on "
            "pooled features from them, then the last stage + head are retrained on them (last stage lr = "
            "head lr x %g, label smoothing %g, feature noise %g, early stopping after %d epochs without a better "
            "val loss)", cfg.model.backbone, cfg.train.last_stage_lr_factor, cfg.train.last_stage_label_smoothing,
            cfg.train.last_stage_feature_noise, cfg.train.early_stopping_patience,
        )
    progress = StageProgress(HAND_AWARE_STAGES if hand_aware else STAGES)
    prepared = prepare_data(cfg, progress, run_dir, activations=kind == "activations")
    best, _, _ = search(cfg, prepared, progress, run_dir)
    best_landmarks = search(cfg, prepared, progress, run_dir, kind="landmarks")[0] if hand_aware else None
    arrays = prepared.activations if kind == "activations" else prepared.features
    classes = prepared.index.classes

    what = "last stage + head on the cached activations" if kind == "activations" else "head on the cached features"
    with progress.stage("retrain", f"Ray Train TorchTrainer, {what}" + (" and the landmark model" if hand_aware else "")
                        + ", best config"):
        # A unique name per invocation: a re-run must never pick up an old run's checkpoints.
        stamp = f"{datetime.now():%Y%m%d-%H%M%S-%f}"
        trained = run_training(best, kind, len(classes), f"retrain-{stamp}",
                               arrays={"train": arrays("train"), "val": arrays("val")},
                               train_weights=prepared.source_weights("train"))
        landmarks = run_training(best_landmarks, "landmarks", len(classes), f"retrain-landmarks-{stamp}",
                                 arrays={"train": prepared.landmarks("train"), "val": prepared.landmarks("val")},
                                 train_weights=prepared.source_weights("train", "landmarks")) if hand_aware else None

    with progress.stage("evaluate", "held-out test split" + (", every fusion rule" if hand_aware else "")):
        test = arrays("test")
        scored = evaluate(trained.model, ArrayBatches(*test, evaluation_batch_size(test[0]), torch.device("cpu")).batches(0))
        metrics = {
            "test_accuracy": scored["accuracy"], "test_loss": scored["loss"], "test_images": int(len(test[1])),
            "val_accuracy": trained.best_metrics["val_accuracy"], "val_loss": trained.best_metrics["val_loss"],
            "best_epoch": trained.best_metrics["epoch"], "epochs_run": len(trained.history),
            "skipped_files": prepared.skipped,
        }
        answers = {split: split_answers(prepared, trained.model, landmarks.model, split)
                   for split in ("val", "test")} if hand_aware else {}

    with progress.stage("export", "writing the model directory" + (", cross-domain scoring" if cross_index else "") + ", ONNX fp32 + int8 checked against torch"):
        if kind == "activations":  # the trained last stage goes into the pretrained backbone
            classifier = into_classifier(cfg.model.backbone, cfg.model.weights, trained.model)
        else:
            classifier = ASLClassifier(cfg.model.backbone, build_backbone(cfg.model.backbone, cfg.model.weights),
                                       trained.model)
        # Versioned like `train`'s exports, so serve/predict-batch/evaluate take <models>/<run.name> (its latest).
        model_dir, card = _export_version(best, classifier, prepared, metrics=metrics,
                                          checkpoint=trained.checkpoint_path)
        cross = score_cross_domain(cfg, model_dir, card, cross_index, landmarks and landmarks.model) if cross_index else None
        if hand_aware:
            card = make_hand_aware(card, cfg, best_landmarks, prepared, answers, cross, landmarks.model)
            save_landmark_weights(landmarks.model, model_dir)
            card.hands.shapes = export_shapes(prepared, model_dir)
        else:
            inputs, labels = arrays("val")
            card.confidence = confidence_card(probabilities(trained.model, inputs, len(classes)), labels,
                                              prepared.source_weights("val"), validation_set(prepared))
        if cross is not None:
            card.metrics.update(cross.metrics(card.fusion.rule if card.fusion else "image", card.confidence.threshold))
        card.onnx = export_runtimes(cfg, model_dir, classifier, card, prepared, cross_index)
        card.save(model_dir)
        write_readme(model_dir, card)
        mark_latest(model_dir)  # last: `latest` only ever names a complete model
        metrics = dict(card.metrics)

    result = PipelineResult(run_dir, model_dir, metrics, progress.seconds)
    (run_dir / "summary.json").write_text(json.dumps(
        {"model_dir": str(model_dir), "metrics": metrics, "stage_seconds": progress.seconds}, indent=2
    ))
    return result


def format_summary(result: PipelineResult, smoke: bool) -> str:
    m = result.metrics
    loss = f" (loss {m['test_loss']:.4f})" if "test_loss" in m else ""
    lines = [
        "",
        "=" * 60,
        "asl-platform pipeline finished" + ("  (SYNTHETIC SMOKE SET - not real ASL accuracy)" if smoke else ""),
        f"  test accuracy : {m['test_accuracy']:.2%} on {m['test_images']} images{loss}",
    ]
    if "test_accuracy_image" in m:
        lines.append(f"    image model : {m['test_accuracy_image']:.2%}; hand found in {m['test_hand_found']:.1%}")
    if "cross_domain_accuracy" in m:
        lines.append(f"  cross-domain  : {m['cross_domain_accuracy']:.2%} on {m['cross_domain_images']} images"
                     " (other people; what a new user should expect)")
    if "cross_domain_accuracy_image" in m:
        lines.append(f"    image model : {m['cross_domain_accuracy_image']:.2%}; hand found in {m['cross_domain_hand_found']:.1%}")
    lines += [
        f"  val accuracy  : {m['val_accuracy']:.2%} (best epoch {m['best_epoch']})",
        f"  skipped files : {m['skipped_files']}",
        f"  model         : {result.model_dir}",
        f"  run outputs   : {result.run_dir}",
        "  stage times   : " + ", ".join(f"{k} {v:.0f}s" for k, v in result.stage_seconds.items()),
        "=" * 60,
    ]
    return "\n".join(lines)


def run_train(cfg: Config) -> dict:
    """`asl-platform train`: Ray Train on the image folders, then an honest evaluation (held-out test
    split, and a cross-domain folder when configured), a versioned export and a job summary."""
    _image_model_only(cfg, "train")
    setup.check_train_keys(cfg, "images")
    started = time.perf_counter()
    run_dir = start_run(cfg)
    progress = StageProgress(TRAIN_STAGES)
    prepared = prepare_data(cfg, progress, run_dir, with_features=False)
    if cfg.data.cross_domain_root:  # check it now, not after an hour of training
        list_images(cfg.data.cross_domain_root)
    name = f"train-{datetime.now():%Y%m%d-%H%M%S-%f}"

    with progress.stage("train", f"Ray Train TorchTrainer, {cfg.train.num_workers} worker(s), up to {cfg.train.epochs} epochs"):
        trained = run_training(cfg, "images", len(prepared.index.classes), name,
                               index={"train": prepared.readable("train"), "val": prepared.readable("val")})

    with progress.stage("export", "versioned model directory"):
        best = trained.best_metrics
        version_dir, card = _export_version(cfg, trained.model, prepared, checkpoint=trained.checkpoint_path, metrics={
            "val_loss": best["val_loss"], "val_accuracy": best["val_accuracy"], "best_epoch": best["epoch"],
            "epochs_run": len(trained.history),
        })

    with progress.stage("evaluate", "held-out test split" + (" and cross-domain folder" if cfg.data.cross_domain_root else "")):
        # Where training ran, inference runs too; and by torch, so that these are the model's own numbers
        # (what each ONNX file gives is checked below and recorded in the card's onnx entry).
        on_gpu = {"use_gpu": cfg.train.use_gpu, "inference": cfg.inference.model_copy(update={"runtime": "torch"})}
        reports = {"test": evaluate_folder(version_dir, cfg.data.roots or [prepared.root], split="test", output_dir=version_dir / "eval",
                                           name="test", **on_gpu)}
        if cfg.data.cross_domain_root:
            reports["cross_domain"] = evaluate_folder(
                version_dir, cfg.data.cross_domain_root, split="all", output_dir=version_dir / "eval", name="cross_domain",
                **on_gpu,
            )
        for prefix, report in reports.items():
            card.metrics.update({f"{prefix}_accuracy": report["accuracy"], f"{prefix}_loss": report["loss"],
                                 f"{prefix}_macro_f1": report["macro_f1"], f"{prefix}_images": report["images"]})
        cross_index = list_images(cfg.data.cross_domain_root) if cfg.data.cross_domain_root else None
        card.onnx = export_runtimes(cfg, version_dir, trained.model, card, prepared, cross_index)
        card.save(version_dir)

    with progress.stage("finalise", "model card, TensorBoard logs"):
        write_readme(version_dir, card)
        write_tensorboard(trained.history, run_dir / "tensorboard" / name)
    summary = _job_summary(progress, trained.history, card, version_dir, time.perf_counter() - started)
    summary["skipped_files"] = prepared.skipped  # listed by path in <run dir>/skipped_files.csv
    for path in (run_dir / "job_summary.json", version_dir / "job_summary.json"):
        path.write_text(json.dumps(summary, indent=2))
    (run_dir / "job_summary.md").write_text(_job_summary_markdown(summary))
    mark_latest(version_dir)  # last: `latest` only ever names a complete model
    return summary


def _job_summary(progress: StageProgress, history: list[dict], card: ModelCard, version_dir: Path, total: float) -> dict:
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
        "metrics": dict(card.metrics),
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
