"""Experiment tracking (``asl_platform.tracking``, MLflow on a file store of the test's own): a pipeline's run with
its nested trial, retrain, evaluation and export runs read back with MLflow's client, the registered version and
its tags, ``models:/`` resolved wherever a model is taken, ``asl-platform models list``; a failed run is marked
FAILED; a store that cannot be reached is a quick warning and the run goes on. The real pipeline's runs:
tests/test_pipeline.py."""

from __future__ import annotations

import logging
import time

import pytest
from helpers.cluster import free_ports

from asl_platform.config import load_config
from asl_platform.errors import UserError
from asl_platform.model import model_location, resolve_model_dir
from asl_platform.model.card import ModelCard
from asl_platform.tracking import Tracker, resolve_registered, tracking_uri


@pytest.fixture()
def cfg(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return load_config(None, ["run.name=colours"], values={"run.output_dir": str(tmp_path / "runs")})


def client_of(cfg):
    from mlflow.tracking import MlflowClient

    store = tracking_uri(cfg.tracking, cfg.run.output_dir)
    return MlflowClient(tracking_uri=store, registry_uri=store)


def test_a_run_logs_its_trials_retrain_evaluation_and_registers_the_model(cfg, colour_model, monkeypatch, capsys):
    card = ModelCard.load(colour_model)
    rows = [{"trial": "t1", "lr": 0.01, "epochs": 2, "best_val_score": 0.2, "stopped_early": True},
            {"trial": "t2", "lr": 0.001, "epochs": 4, "best_val_score": 0.3, "stopped_early": False}]
    histories = {"t1": [{"training_iteration": 1, "val_score": 0.5}, {"training_iteration": 2, "val_score": 0.2}]}
    tracker = Tracker(cfg)
    with tracker.pipeline_run("pipeline"):
        tracker.search("image", rows, histories)
        tracker.retrain("image", cfg, [{"epoch": 1, "val_loss": 0.9}, {"epoch": 2, "val_loss": 0.4}],
                        {"epoch": 2, "val_loss": 0.4})
        tracker.evaluation({"test_accuracy": 0.75, "cross_domain": {"alice": 0.5}}, colour_model)
        registered = tracker.export(colour_model, card)
    assert registered == "models:/colours/1"

    client = client_of(cfg)
    runs = client.search_runs([client.get_experiment_by_name("colours").experiment_id])
    parent = next(r for r in runs if r.info.run_name == "pipeline")
    nested = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(nested) == {"image trial t1", "image trial t2", "image retrain", "evaluate", "export"}
    assert parent.info.status == "FINISHED" and parent.data.metrics["test_accuracy"] == 0.75
    assert parent.data.params["train.lr"] == str(cfg.train.lr)
    trial = nested["image trial t1"]
    assert trial.data.params["lr"] == "0.01" and trial.data.tags["stopped_early"] == "True"
    assert [m.value for m in client.get_metric_history(trial.info.run_id, "val_score")] == [0.5, 0.2]
    assert [(m.step, m.value) for m in client.get_metric_history(nested["image retrain"].info.run_id, "val_loss")] \
        == [(1, 0.9), (2, 0.4)]
    assert nested["evaluate"].data.metrics["cross_domain.alice"] == 0.5

    (version,) = client.search_model_versions("name='colours'")
    assert version.source == str(colour_model.resolve()) and version.tags["card_version"] == str(card.version)
    assert version.tags["inputs_sha256"] == str(card.inputs_sha256 or "")
    folder = str(colour_model.resolve())
    assert resolve_registered("models:/colours/1", cfg.tracking, cfg.run.output_dir) == folder
    client.set_registered_model_alias("colours", "champion", "1")
    assert resolve_registered("models:/colours@champion", cfg.tracking, cfg.run.output_dir) == folder
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(cfg.tracking, cfg.run.output_dir))  # serve, evaluate, batch
    assert model_location("models:/colours/1") == folder and resolve_model_dir("models:/colours@champion") == colour_model.resolve()
    with pytest.raises(UserError, match="not in the registry"):
        resolve_registered("models:/colours/7", cfg.tracking, cfg.run.output_dir)

    from asl_platform.cli import main

    assert main(["models", "list", "--output", cfg.run.output_dir]) == 0
    listed = capsys.readouterr().out
    assert "models:/colours/1 @champion" in listed and folder in listed


def test_a_failed_run_is_marked_failed(cfg):
    tracker = Tracker(cfg)
    with pytest.raises(RuntimeError), tracker.pipeline_run("pipeline"):
        raise RuntimeError("a stage broke")
    client = client_of(cfg)
    (run,) = client.search_runs([client.get_experiment_by_name("colours").experiment_id])
    assert run.info.status == "FAILED"


def test_a_tracking_server_that_cannot_be_reached_is_a_quick_warning_and_the_run_goes_on(cfg, caplog):
    cfg.tracking.uri = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens
    tracker = Tracker(cfg)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="asl_platform"), tracker.pipeline_run("pipeline"):
        tracker.search("image", [{"trial": "t1", "lr": 0.1}], {})
        assert tracker.export(None, None) is None  # nothing registered, nothing raised
    assert time.monotonic() - started < 10 and "does not answer" in caplog.text and "the run goes on" in caplog.text
    cfg.tracking.uri, cfg.run.output_dir = None, "s3://bucket/runs"  # no local folder for the default store
    with caplog.at_level(logging.WARNING, logger="asl_platform"), Tracker(cfg).pipeline_run("pipeline"):
        pass
    assert "not a local folder" in caplog.text
    cfg.tracking.enabled = False  # off: nothing is even tried
    assert Tracker(cfg).export(None, None) is None
