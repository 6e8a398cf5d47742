"""Experiment tracking and the model registry with MLflow, from the driver only.

A pipeline is one MLflow run (its config as parameters, its figures as metrics), with a nested run per search trial
(its hyperparameters, every reported metric per epoch, whether ASHA stopped it early), per retrained model (its
config, per-epoch metrics, the best epoch), for the evaluation (every in-domain and cross-domain figure of the model
card; the reports, confusion matrices and per-class tables as artifacts) and for the export (the card, the ONNX
checks); the model folder becomes a new version of the registered model ``run.name``, tagged with the card's version
and ``inputs_sha256``.

Why from the driver, after each stage: the stages already return every figure (Tune's trial histories, Ray Train's
epoch history), and Ray Train V2 refuses ``MLflowLoggerCallback`` in its RunConfig (ray-project/ray issues 64179,
64253); a worker never talks to the store. Why ``mlflow-skinny``: the tracking client and registry without the
server, its UI or a database layer (``pip install mlflow`` adds ``mlflow ui`` and ``sqlite:`` stores). The default
store is MLflow's file store under the runs folder, which MLflow 3 keeps in "maintenance mode" behind
``MLFLOW_ALLOW_FILE_STORE``: set here for ``file:`` stores only, as it is what needs no server.

Nothing is lost when the store cannot be reached: a warning, then the run goes on (its folder has everything).
A run that fails is marked FAILED.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from asl_platform.config import Config, TrackingConfig

logger = logging.getLogger(__name__)

REACH_TIMEOUT_S = 3.0  # an unreachable server is a warning within seconds, not MLflow's minutes of retries


def tracking_uri(settings: TrackingConfig, output_dir: str | Path) -> str:
    """The store: ``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else a file store under the runs folder."""
    return settings.uri or os.environ.get("MLFLOW_TRACKING_URI") or Path(output_dir).resolve().joinpath("mlruns").as_uri()


def _reachable(uri: str) -> str | None:
    """None where the store can be used, else why not (an http(s) server that does not answer in seconds)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "", port), timeout=REACH_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{parsed.hostname}:{port} does not answer ({exc.strerror or exc})"


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = value
    return out


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a (nested) dict, as MLflow metrics (``a.b`` keys)."""
    return {key: float(value) for key, value in _flat("", values, {}).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


class Tracker:
    """One pipeline's MLflow run and the runs nested in it; every call a no-op once tracking is off or has failed."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.uri = tracking_uri(cfg.tracking, cfg.run.output_dir)
        self.active = False
        self._mlflow = None

    # ------------------------------------------------------------------ the run
    @contextlib.contextmanager
    def pipeline_run(self, name: str) -> Iterator[Tracker]:
        """The pipeline's run around the stages: FINISHED, or FAILED when the stages raise (and re-raise)."""
        self._start(name)
        try:
            yield self
        except BaseException:
            self._end("FAILED")
            raise
        self._end("FINISHED")

    def _start(self, name: str) -> None:
        if not self.cfg.tracking.enabled:
            return
        if self.cfg.tracking.uri is None and "://" in str(self.cfg.run.output_dir):
            logger.warning("tracking: run.output_dir %s is not a local folder, where the default store lives: set "
                           "tracking.uri (a tracking server) to track this run; the run goes on", self.cfg.run.output_dir)
            return
        problem = _reachable(self.uri)
        if problem:
            logger.warning("tracking: %s: %s; the run goes on, its folder keeps everything", self.uri, problem)
            return
        with self._guard("starting the run"):
            if self.uri.startswith("file:"):
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # what needs no server (module docstring)
            import mlflow

            mlflow.set_tracking_uri(self.uri)
            mlflow.set_experiment(self.cfg.tracking.experiment or self.cfg.run.name)
            self._mlflow = mlflow
            mlflow.start_run(run_name=name)
            self.active = True
            params = _flat("", self.cfg.model_dump(mode="json", exclude={"serve", "tracking"}), {})
            mlflow.log_params({key: str(value)[:500] for key, value in params.items()})
            logger.info("tracking: run %s in %s (experiment %s)", mlflow.active_run().info.run_id, self.uri,
                        self.cfg.tracking.experiment or self.cfg.run.name)

    def _end(self, status: str) -> None:
        if self.active:
            with self._guard("ending the run"):
                while self._mlflow.active_run() is not None:
                    self._mlflow.end_run(status=status)
        self.active = False

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """A store that fails mid-run: one warning, then tracking is off for the rest of the run."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 (MLflow, HTTP, file system: the run must go on whatever it is)
            logger.warning("tracking: %s failed (%s: %s); tracking is off for the rest of this run, its folder keeps "
                           "everything", what, type(exc).__name__, exc)
            self.active = False
            with contextlib.suppress(Exception):
                while self._mlflow is not None and self._mlflow.active_run() is not None:
                    self._mlflow.end_run(status="FAILED")

    @contextlib.contextmanager
    def _nested(self, name: str, what: str) -> Iterator[Any]:
        if not self.active:
            yield None
            return
        with self._guard(what), self._mlflow.start_run(run_name=name, nested=True):
            yield self._mlflow

    # ------------------------------------------------------------------ the stages
    def reused(self, model_dir: Path) -> None:
        """Nothing changed since ``model_dir`` was made: this run trained nothing, and says which model it is."""
        if self.active:
            with self._guard("logging the reuse"):
                self._mlflow.set_tags({"reused": "true", "model_dir": str(model_dir)})

    def search(self, model: str, rows: list[dict], histories: dict[str, list[dict]]) -> None:
        """A nested run per trial: its hyperparameters, each reported metric per epoch, ASHA's stop."""
        for row in rows:
            with self._nested(f"{model} trial {row.get('trial', '?')}", f"logging {model} trial") as mlflow:
                if mlflow is None:
                    return
                mlflow.set_tags({"stage": "tune", "model": model})
                scalars = {k: v for k, v in row.items() if k not in ("trial", "error")}
                mlflow.log_params({k: v for k, v in scalars.items() if not k.startswith("best_") and k != "epochs"})
                mlflow.log_metrics(_numbers({k: v for k, v in scalars.items() if k.startswith("best_") or k == "epochs"}))
                mlflow.set_tag("stopped_early", str(row.get("stopped_early")))
                self._epochs(mlflow, histories.get(str(row.get("trial")), []))

    def retrain(self, model: str, cfg: Config, history: list[dict], best: dict) -> None:
        """The retrained model: its config's training keys, each epoch's metrics, the best epoch."""
        with self._nested(f"{model} retrain", f"logging the {model} retrain") as mlflow:
            if mlflow is None:
                return
            mlflow.set_tags({"stage": "retrain", "model": model})
            mlflow.log_params({f"train.{k}": v for k, v in cfg.train.model_dump(mode="json").items()})
            self._epochs(mlflow, history)
            mlflow.log_metrics(_numbers({f"best.{k}": v for k, v in best.items()}))

    def evaluation(self, metrics: dict, model_dir: Path) -> None:
        """Every figure of the card (in-domain test, cross-domain per folder and person, calibrated), and the
        reports under ``eval/`` (per-class tables, confusion matrices) as artifacts; the same figures on the
        pipeline's run, to compare runs at a glance."""
        figures = _numbers(metrics)
        with self._nested("evaluate", "logging the evaluation") as mlflow:
            if mlflow is None:
                return
            mlflow.set_tag("stage", "evaluate")
            mlflow.log_metrics(figures)
            if (model_dir / "eval").is_dir():
                mlflow.log_artifacts(str(model_dir / "eval"), artifact_path="eval")
        if self.active:
            with self._guard("logging the figures"):
                self._mlflow.log_metrics(figures)

    def export(self, model_dir: Path, card) -> str | None:
        """The card and ONNX checks on a nested run, and the folder as a new version of the registered model
        ``run.name``; returns ``models:/<name>/<version>`` (None when not tracking)."""
        with self._nested("export", "registering the model") as mlflow:
            if mlflow is None:
                return None
            mlflow.set_tag("stage", "export")
            mlflow.log_dict(card.model_dump(mode="json"), "model.json")
            if card.onnx is not None:
                mlflow.log_dict(card.onnx.model_dump(mode="json"), "onnx.json")
                mlflow.set_tag("int8_usable", str(card.onnx.int8_usable))
            from mlflow.tracking import MlflowClient

            client = MlflowClient()
            name = self.cfg.run.name
            with contextlib.suppress(Exception):  # it exists already: a new version of it
                client.create_registered_model(name, description="asl-platform models (asl-platform models list)")
            version = client.create_model_version(name, source=str(model_dir.resolve()), run_id=mlflow.active_run().info.run_id,
                                                  tags={"card_version": str(card.version),
                                                        "inputs_sha256": str(card.inputs_sha256 or "")})
            logger.info("tracking: registered models:/%s/%s (%s)", name, version.version, model_dir)
            return f"models:/{name}/{version.version}"

    @staticmethod
    def _epochs(mlflow, history: list[dict]) -> None:
        for index, record in enumerate(history, start=1):
            step = int(record.get("epoch", record.get("training_iteration", index)))
            mlflow.log_metrics(_numbers({k: v for k, v in record.items()
                                         if k not in ("epoch", "training_iteration", "timestamp", "time_this_iter_s",
                                                      "time_total_s", "time_since_restore", "iterations_since_restore",
                                                      "pid", "done")}), step=step)


def resolve_registered(uri: str, settings: TrackingConfig | None = None, output_dir: str | Path = "asl_runs") -> str:
    """``models:/<name>/<version>`` or ``models:/<name>@<alias>`` -> the model folder it registered."""
    from asl_platform.errors import UserError

    settings = settings or TrackingConfig()
    store = tracking_uri(settings, output_dir)
    if store.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    problem = _reachable(store)
    if problem:
        raise UserError(f"{uri}: the tracking store {store} cannot be reached ({problem})")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    reference = uri[len("models:/"):]
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    try:
        if "@" in reference:
            name, alias = reference.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = reference.partition("/")
            if not number.isdigit():
                raise UserError(f"{uri}: expected models:/<name>/<version> or models:/<name>@<alias>")
            version = client.get_model_version(name, number)
    except MlflowException as exc:
        raise UserError(f"{uri}: not in the registry at {store} ({exc.message.splitlines()[0]}); "
                        "`asl-platform models list` shows what is") from None
    return version.source


def registered_versions(settings: TrackingConfig, output_dir: str | Path) -> list:
    """Every registered version (MLflow ``ModelVersion``s), by name then version, for ``asl-platform models list``."""
    store = tracking_uri(settings, output_dir)
    if store.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    return sorted(client.search_model_versions(), key=lambda version: (version.name, int(version.version)))
