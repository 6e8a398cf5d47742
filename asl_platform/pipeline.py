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

from asl_platform.config import Config, ConfigError
from asl_platform.data.listing import join_classes, list_images
from asl_platform.model import ModelCard, mark_latest, write_readme
from asl_platform.stages.evaluate import evaluate_folder, evaluate_held_out
from asl_platform.stages.export import export_model, export_version, latest_made_from
from asl_platform.stages.ingest import StageProgress, ingest, inputs_key, prepare_data, start_run
from asl_platform.stages.onnx_export import export_onnx
from asl_platform.stages.retrain import retrain
from asl_platform.stages.tune import search
from asl_platform.tracking import Tracker
from asl_platform.training import recipe
from asl_platform.training.search import check_bounds, check_resumable
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
    reused: bool = False  # nothing changed since the latest model was made: it is the result


def run_tune(cfg: Config, resume: bool = False) -> tuple[Path, list[dict]]:
    """`asl-platform tune`: ingest, features (when used), and the search; returns best_config.yaml."""
    tracker = Tracker(cfg)
    with tracker.pipeline_run("tune"):
        return _tune(cfg, resume, tracker)


def _tune(cfg: Config, resume: bool, tracker: Tracker) -> tuple[Path, list[dict]]:
    _image_model_only(cfg, "tune")
    check_bounds(cfg)  # before any work
    if resume:
        check_resumable(cfg)
    run_dir = start_run(cfg)
    stages = ("ingest", "features", "tune") if cfg.tune.mode == "features" else ("ingest", "check", "tune")
    progress = StageProgress(stages)
    prepared = prepare_data(cfg, progress, run_dir, with_features=cfg.tune.mode == "features", command="tune")
    outcome = search(cfg, prepared, progress, run_dir, resume)
    tracker.search("image", outcome.rows, outcome.histories)
    return outcome.best_config_path, outcome.rows


def _image_model_only(cfg: Config, command: str) -> None:
    if cfg.model.kind != "image":
        raise ConfigError(f"model.kind={cfg.model.kind}: asl-platform {command} trains the image model only; "
                          "asl-platform pipeline builds hand-aware models")


def run_pipeline(cfg: Config) -> PipelineResult:
    """Run every stage on ``cfg``; with no data root, on the built-in synthetic smoke set. Tracked (``tracking``)
    as one MLflow run with a nested run per trial, retrain, evaluation and export."""
    tracker = Tracker(cfg)
    with tracker.pipeline_run("pipeline"):
        return _pipeline(cfg, tracker)


def _pipeline(cfg: Config, tracker: Tracker) -> PipelineResult:
    kind: recipe.Kind = "activations" if cfg.model.unfreeze_last_stage else "features"
    hand_aware = cfg.model.kind == "hand_aware"
    recipe.check_train_keys(cfg, kind, searched=True)  # before any work: no setting may silently do nothing
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
    prepared = ingest(cfg, progress)
    prepared.inputs = inputs_key(cfg, prepared.index, cross_index)
    if cfg.run.reuse_unchanged and (latest := latest_made_from(cfg, prepared.inputs)) is not None:
        model_dir, card = latest
        logger.info("nothing changed since %s was made (config, files, code, libraries): reusing it; "
                    "--set run.reuse_unchanged=false trains again", model_dir)
        tracker.reused(model_dir)
        return _write_summary(PipelineResult(run_dir, model_dir, dict(card.metrics), progress.seconds, reused=True))
    prepared = prepare_data(cfg, progress, run_dir, activations=kind == "activations", cross_index=cross_index,
                            prepared=prepared)
    outcome = search(cfg, prepared, progress, run_dir)
    tracker.search("image", outcome.rows, outcome.histories)
    best, best_landmarks = outcome.best, None
    if hand_aware:
        landmark_outcome = search(recipe.landmark_config(cfg), prepared, progress, run_dir, kind="landmarks")
        tracker.search("landmarks", landmark_outcome.rows, landmark_outcome.histories)
        best_landmarks = landmark_outcome.best
    what = "last stage + head on the cached activations" if kind == "activations" else "head on the cached features"
    with progress.stage("retrain", f"Ray Train TorchTrainer, {what}" + (" and the landmark model" if hand_aware else "")
                        + ", best config"):
        retrained = retrain(best, best_landmarks, prepared, kind)
    tracker.retrain("image", best, retrained.image.history, retrained.image.best_metrics)
    if retrained.landmarks is not None:
        tracker.retrain("landmarks", best_landmarks, retrained.landmarks.history, retrained.landmarks.best_metrics)
    with progress.stage("evaluate", "held-out test split" + (", every fusion rule" if hand_aware else "")):
        metrics, answers = evaluate_held_out(retrained, prepared, kind)
    with progress.stage("export", "writing the model directory" + (", cross-domain scoring" if cross_index else "")
                        + ", ONNX fp32 + int8 checked against torch"):
        model_dir, card = export_model(cfg, best, best_landmarks, prepared, retrained, metrics, answers, cross_index, kind)
        metrics = dict(card.metrics)
    tracker.evaluation(metrics, model_dir)
    tracker.export(model_dir, card)

    return _write_summary(PipelineResult(run_dir, model_dir, metrics, progress.seconds))


def _write_summary(result: PipelineResult) -> PipelineResult:
    (result.run_dir / "summary.json").write_text(json.dumps(
        {"model_dir": str(result.model_dir), "metrics": result.metrics, "stage_seconds": result.stage_seconds,
         "reused": result.reused}, indent=2
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
    if "val_people_groups" in m:  # chosen on held-out people
        lines.append(f"  held-out people: {m['val_accuracy']:.2%} (mean of {m['val_people_groups']} groups, each answered "
                     "by models trained without it: what every choice was made on)")
    else:
        lines.append(f"  val accuracy  : {m['val_accuracy']:.2%} (best epoch {m['best_epoch']})")
    lines += [
        f"  skipped files : {m['skipped_files']}",
        f"  model         : {result.model_dir}" + ("  (reused: nothing changed since it was made)" if result.reused else ""),
        f"  run outputs   : {result.run_dir}",
        "  stage times   : " + ", ".join(f"{k} {v:.0f}s" for k, v in result.stage_seconds.items()),
        "=" * 60,
    ]
    return "\n".join(lines)


def run_train(cfg: Config) -> dict:
    """`asl-platform train`: Ray Train on the image folders, then an honest evaluation (held-out test
    split, and a cross-domain folder when configured), a versioned export and a job summary."""
    tracker = Tracker(cfg)
    with tracker.pipeline_run("train"):
        return _train(cfg, tracker)


def _train(cfg: Config, tracker: Tracker) -> dict:
    _image_model_only(cfg, "train")
    recipe.check_train_keys(cfg, "images")
    started = time.perf_counter()
    run_dir = start_run(cfg)
    progress = StageProgress(TRAIN_STAGES)
    prepared = prepare_data(cfg, progress, run_dir, with_features=False, command="train")
    if cfg.data.cross_domain_root:  # check it now, not after an hour of training
        list_images(cfg.data.cross_domain_root)
    name = f"train-{datetime.now():%Y%m%d-%H%M%S-%f}"

    with progress.stage("train", f"Ray Train TorchTrainer, {cfg.train.num_workers} worker(s), up to {cfg.train.epochs} epochs"):
        trained = run_training(cfg, "images", len(prepared.index.classes), name,
                               index={"train": prepared.readable("train"), "val": prepared.readable("val")})

    with progress.stage("export", "versioned model directory"):
        best = trained.best_metrics
        version_dir, card = export_version(cfg, trained.model, prepared, checkpoint=trained.checkpoint_path, metrics={
            "val_loss": best["val_loss"], "val_accuracy": best["val_accuracy"], "best_epoch": best["epoch"],
            "epochs_run": len(trained.history),
        })

    with progress.stage("evaluate", "held-out test split" + (" and cross-domain folder" if cfg.data.cross_domain_root else "")):
        # Where training ran, inference runs too; and by torch, so that these are the model's own numbers
        # (what each ONNX file gives is checked below and recorded in the card's onnx entry).
        by_torch = cfg.inference.model_copy(update={"runtime": "torch"})
        reports = {"test": evaluate_folder(version_dir, cfg.data.roots or [prepared.root], split="test", output_dir=version_dir / "eval",
                                           name="test", use_gpu=cfg.train.use_gpu, inference=by_torch)}
        if cfg.data.cross_domain_root:
            reports["cross_domain"] = evaluate_folder(
                version_dir, cfg.data.cross_domain_root, split="all", output_dir=version_dir / "eval", name="cross_domain",
                use_gpu=cfg.train.use_gpu, inference=by_torch,
            )
        for prefix, report in reports.items():
            card.metrics.update({f"{prefix}_accuracy": report["accuracy"], f"{prefix}_loss": report["loss"],
                                 f"{prefix}_macro_f1": report["macro_f1"], f"{prefix}_images": report["images"]})
        # The ONNX copies against torch, run on the same decoded images (no cached features to answer from here).
        sets = {"test": (*join_classes(prepared.readable("test"), card.classes)[:2], None)}
        if cfg.data.cross_domain_root:
            sets["cross_domain"] = (*join_classes(list_images(cfg.data.cross_domain_root), card.classes)[:2], None)
        card.onnx = export_onnx(version_dir, trained.model, card, prepared.readable("train").paths, sets, cfg.inference,
                                batch_size=cfg.data.batch_size, max_bytes=cfg.data.max_image_bytes, seed=cfg.data.seed)
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
    tracker.retrain("image", cfg, trained.history, trained.best_metrics)
    tracker.evaluation(card.metrics, version_dir)
    tracker.export(version_dir, card)
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
