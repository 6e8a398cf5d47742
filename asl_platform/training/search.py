"""Hyperparameter search: parallel ASHA trials with Ray Tune, each running the one training loop.

The whole config is the search's ``param_space``; only the sampled keys (``recipe.SEARCHED``) are
search domains, so every trial trains exactly what the config says, with its own sampled values.
Trials on cached features are cheap because the backbone never runs: the arrays go into Ray's object
store once (``tune.with_parameters``) and every trial trains only the head.
"""

from __future__ import annotations

import csv
import json
import logging
from datetime import datetime
from pathlib import Path

import torch
from pydantic import ValidationError

from asl_platform.config import Config, ConfigError, set_key
from asl_platform.data.storage import is_remote, storage_uri
from asl_platform.errors import UserError
from asl_platform.model import get_backbone_spec
from asl_platform.training import recipe
from asl_platform.training.loop import EarlyStopping, TrainingState, fit
from asl_platform.training.sources import ArrayBatches, FileBatches, evaluation_batch_size, member_sources

logger = logging.getLogger(__name__)


def search_bounds(cfg: Config) -> dict[str, list]:
    """Dotted key -> its bounds (``tune.<key>``): a range's two ends, or a choice's values."""
    return {dotted: list(getattr(cfg.tune, dotted.split(".")[1])) for dotted in recipe.SEARCHED}


def param_space(cfg: Config) -> dict:
    """The run's whole config, with the sampled keys replaced by search domains whose bounds are
    ``tune.*``: the AdamW space (lr, eps, weight_decay, batch_size) plus the head's shape."""
    from ray import tune

    space = cfg.model_dump(mode="json")
    for dotted, values in search_bounds(cfg).items():
        sampler = recipe.SEARCHED[dotted]
        domain = tune.choice(values) if sampler == "choice" else getattr(tune, sampler)(*values)
        set_key(space, dotted.split("."), domain)
    return space


def check_bounds(cfg: Config) -> None:
    """Every value the search can sample must be valid where it lands (a ``tune.lr`` bound above
    what ``train.lr`` accepts would otherwise fail every trial): refuse such bounds up front."""
    problems = []
    for dotted, values in search_bounds(cfg).items():
        for value in values:
            tree = cfg.model_dump(mode="json")
            set_key(tree, dotted.split("."), value)
            try:
                Config.model_validate(tree)
            except ValidationError as exc:
                reason = exc.errors()[0]["msg"]
                problems.append(f"  tune.{dotted.split('.')[1]}: {value:g} can be sampled, but {dotted}: {reason}")
    if problems:
        raise ConfigError("search bounds outside what the config accepts:\n" + "\n".join(problems))


def searched_values(config: dict) -> dict:
    """A trial's sampled values by short name (lr, eps, ..., dropout), from its whole config."""
    values = {}
    for dotted in recipe.SEARCHED:
        section, key = dotted.split(".")
        values[key] = config[section][key]
    return values


def search_trial(config: dict, data: dict) -> None:
    """One Tune trial: a fresh model trained by ``loop.fit`` on ``data``; val loss/accuracy reported every epoch."""
    from ray import tune

    cfg = Config.model_validate(config)
    torch.set_num_threads(max(1, int(cfg.tune.cpus_per_trial)))
    torch.manual_seed(cfg.tune.seed)
    device = torch.device("cuda" if cfg.tune.gpus_per_trial > 0 and torch.cuda.is_available() else "cpu")
    kind, batch_size = data["kind"], cfg.train.batch_size
    if data.get("folds") is not None:  # held-out people: one model per fold, scored on its group (loop.fit)
        (x_train, y_train), folds = data["train"], data["folds"]
        model = recipe.build_members(cfg, kind, data["num_classes"], x_train.shape[1], len(folds), cfg.tune.seed)
        train, val = member_sources(x_train, y_train, folds, batch_size, device, seed=cfg.tune.seed,
                                    weights=data.get("train_weights"), everyone=False)
    elif kind in recipe.ARRAY_KINDS:
        (x_train, y_train), (x_val, y_val) = data["train"], data["val"]
        model = recipe.build_model(cfg, kind, data["num_classes"], x_train.shape[1])
        train = ArrayBatches(x_train, y_train, batch_size, device, shuffle=True, seed=cfg.tune.seed,
                             weights=data.get("train_weights"))
        val = ArrayBatches(x_val, y_val, evaluation_batch_size(x_val), device)
    else:  # full images: the backbone runs on every image, every epoch (augmentation, an unfrozen last stage)
        prep = get_backbone_spec(cfg.model.backbone).preprocessing
        model = recipe.build_model(cfg, kind, data["num_classes"])
        train = FileBatches(*data["train_files"], prep, batch_size, device, shuffle=True, augment=cfg.tune.augment,
                            seed=cfg.tune.seed)
        val = FileBatches(*data["val_files"], prep, batch_size, device)
    model = model.to(device)
    optimizer = recipe.make_optimizer(model, cfg)
    state = TrainingState(EarlyStopping(patience=None))  # ASHA decides which trials stop early
    for metrics in fit(model, optimizer, train, val, epochs=cfg.tune.max_epochs, state=state,
                       label_smoothing=recipe.label_smoothing(cfg, kind), amp=recipe.mixed_precision(cfg, kind, device)):
        tune.report(metrics)


def _trainable(cfg: Config, data: dict):
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(search_trial, data=data), {"cpu": cfg.tune.cpus_per_trial, "gpu": cfg.tune.gpus_per_trial}
    )


def experiment_uri(cfg: Config, name: str = "tune") -> str:
    """Where the search ``name`` keeps its Tune experiment (what ``--resume`` restores)."""
    return f"{storage_uri(cfg.storage_path)}/{name}"


def check_resumable(cfg: Config, name: str = "tune") -> None:
    """``--resume`` needs an interrupted search: say so before any data work, not after it."""
    from ray import tune

    experiment = experiment_uri(cfg, name)
    if not tune.Tuner.can_restore(experiment):
        raise UserError(f"no interrupted search to resume at {experiment}; run without --resume")


def run_search(data: dict, cfg: Config, name: str = "tune", resume: bool = False):
    """Run (or resume) the ASHA search; return the best trial's whole config, one row per trial, and
    Tune's results.

    ``data`` holds what trials need besides the config: ``kind`` ("features", "landmarks":
    ``train``/``val`` arrays and, optionally, ``train_weights``, or instead of ``val`` the ``folds`` that
    hold people out (``data.people``: a trial is then scored on people its models were not trained on);
    "images": ``train_files``/``val_files``) and ``num_classes``. A fresh search never
    overwrites an earlier one: its folder is renamed aside first."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    bounds = cfg.tune
    check_bounds(cfg)
    if cfg.train.init_from:  # trials start fresh; a warm start is asl-platform train's
        raise ConfigError("train.init_from applies only to asl-platform train (a warm start of the whole "
                          "classifier); the search trains fresh models")
    experiment = experiment_uri(cfg, name)
    if resume:
        check_resumable(cfg, name)
        logger.info("resuming the search in %s (finished trials are kept)", experiment)
        tuner = tune.Tuner.restore(experiment, trainable=_trainable(cfg, data), resume_unfinished=True, resume_errored=True)
    else:
        _move_aside(experiment)
        tuner = tune.Tuner(
            _trainable(cfg, data),
            param_space=param_space(cfg),
            tune_config=tune.TuneConfig(
                metric="val_score",  # loop.fit: the validation loss, or the error on held-out people
                mode="min",
                num_samples=bounds.num_samples,
                # The limit goes to the generator itself: Tune ignores TuneConfig.max_concurrent_trials
                # (with a warning) when it is given a search algorithm of this kind.
                search_alg=BasicVariantGenerator(random_state=bounds.seed, max_concurrent=bounds.max_concurrent_trials or 0),
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=bounds.max_epochs,
                                        grace_period=bounds.grace_period, reduction_factor=bounds.reduction_factor),
                # A trial's process is handed to the next trial: most trials are a few seconds of arithmetic,
                # and starting a process (Python, torch, this package) for each cost about as much again.
                reuse_actors=True,
            ),
            # Tune's own status tables print each trial's whole config (kilobytes a line): one line per
            # finished trial instead, plain text, readable in a log as in a terminal.
            run_config=tune.RunConfig(name=name, storage_path=storage_uri(cfg.storage_path), verbose=0,
                                      callbacks=[trial_progress(bounds.num_samples)],
                                      failure_config=tune.FailureConfig(max_failures=bounds.max_failures)),
        )
    results = tuner.fit()
    rows = trial_rows(results, bounds.max_epochs)
    best = results.get_best_result(metric="val_score", mode="min", scope="all")
    return Config.model_validate(best.config), rows, results


def trial_progress(total: int):
    """A Tune callback that logs a line as each trial ends: how far the search is, that trial's result
    and sampled values, and the best validation loss so far."""
    from ray import tune

    class TrialProgress(tune.Callback):
        def __init__(self):
            self.best: float | None = None

        def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
            result = trial.last_result or {}
            loss, score = result.get("val_loss"), result.get("val_score")
            if score is not None and (self.best is None or score < self.best):
                self.best = score
            done = sum(t.status in ("TERMINATED", "ERROR") for t in trials) + (trial.status not in ("TERMINATED", "ERROR"))
            values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in searched_values(trial.config).items())
            logger.info("search: trial %d of %d done after %s epoch(s): val_loss %s, val_accuracy %s (%s); best val_score %s",
                        done, total, result.get("training_iteration", "?"),
                        f"{loss:.4f}" if loss is not None else "-",
                        f"{result['val_accuracy']:.2%}" if "val_accuracy" in result else "-", values,
                        f"{self.best:.4f}" if self.best is not None else "-")

        def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
            logger.warning("search: trial %s failed (Tune retries it up to tune.max_failures times)", trial.trial_id)

    return TrialProgress()


def _move_aside(experiment: str) -> None:
    """Keep an earlier search's results: rename its folder with a timestamp (local storage)."""
    path = Path(experiment)
    if not is_remote(experiment) and path.exists():
        target = path.with_name(f"{path.name}-{datetime.now():%Y%m%d-%H%M%S-%f}")
        path.rename(target)
        logger.info("an earlier search was kept as %s", target)


def plot_curves(results, path: Path) -> Path:
    """Validation loss and accuracy per epoch, one line per trial (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(12, 4.5))
    for result in results:
        history = result.metrics_dataframe
        if history is None or history.empty:
            continue
        label = str(result.metrics.get("trial_id", "?"))
        loss_axis.plot(history["training_iteration"], history["val_loss"], marker=".", label=label)
        accuracy_axis.plot(history["training_iteration"], history["val_accuracy"], marker=".", label=label)
    loss_axis.set(title="validation loss", xlabel="epoch", yscale="log")
    accuracy_axis.set(title="validation accuracy", xlabel="epoch", ylim=(0, 1))
    accuracy_axis.legend(fontsize=7, ncol=2, loc="lower right")
    figure.suptitle("ASHA trials (lines that end early were stopped by the scheduler)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def trial_rows(results, max_epochs: int) -> list[dict]:
    """One row per trial: its config, epochs run, its best epoch's val score, loss and accuracy (best by
    ``val_score``), stopped early or not; best first."""
    rows = []
    for result in results:
        history = result.metrics_dataframe
        if history is None or history.empty:
            rows.append({"trial": Path(result.path).name if result.path else "?", **searched_values(result.config),
                         "error": str(result.error)})
            continue
        best = history.loc[history["val_score"].idxmin()]
        epochs = int(history["training_iteration"].max())
        rows.append({
            "trial": str(result.metrics.get("trial_id", Path(result.path).name)),
            **searched_values(result.config),
            "epochs": epochs,
            "best_val_score": float(best["val_score"]),
            "best_val_loss": float(best["val_loss"]),
            "best_val_accuracy": float(best["val_accuracy"]),
            "stopped_early": epochs < max_epochs,
        })
    return sorted(rows, key=lambda row: row.get("best_val_score", float("inf")))


def trial_histories(results) -> dict[str, list[dict]]:
    """Every trial's reported metrics, epoch by epoch (what experiment tracking logs), by the trial id of ``trial_rows``."""
    histories = {}
    for result in results:
        history = result.metrics_dataframe
        if history is None or history.empty:
            continue
        trial = str(result.metrics.get("trial_id", Path(result.path).name))
        numeric = history.select_dtypes("number")
        histories[trial] = numeric.to_dict("records")
    return histories


def write_results(rows: list[dict], best: Config, directory: Path) -> Path:
    """Save the trial table (CSV + JSON) and the best trial's config as a YAML usable as ``--config``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "trials.json").write_text(json.dumps(rows, indent=2, default=str))
    if rows:
        fields = list(dict.fromkeys(key for row in rows for key in row))
        with open(directory / "trials.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    path = directory / "best_config.yaml"
    path.write_text("# The run's config with the best trial of the ASHA search in train.lr/eps/weight_decay/\n"
                    "# batch_size and model.hidden_size/dropout; usable as --config.\n" + best.to_yaml())
    return path


def format_table(rows: list[dict], limit: int = 20) -> str:
    """A plain-text table of the trials for the log."""
    header = f"{'trial':<12} {'lr':>9} {'wd':>8} {'bs':>4} {'hid':>4} {'drop':>5} {'ep':>3} {'val_loss':>9} {'val_acc':>8}"
    lines = [header]
    for row in rows[:limit]:
        if "best_val_loss" not in row:
            lines.append(f"{row['trial']:<12} failed: {row.get('error')}")
            continue
        lines.append(
            f"{row['trial']:<12} {row['lr']:>9.2e} {row['weight_decay']:>8.1e} {row['batch_size']:>4} "
            f"{row['hidden_size']:>4} {row['dropout']:>5.2f} {row['epochs']:>3} {row['best_val_loss']:>9.4f} "
            f"{row['best_val_accuracy']:>8.4f}" + ("  (stopped early)" if row["stopped_early"] else "")
        )
    return "\n".join(lines)

