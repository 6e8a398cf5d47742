"""``asl-platform`` command line: one subcommand per stage a user runs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from asl_platform.config import Config, InferenceConfig, builtin_config_path, config_reference, load_config
from asl_platform.errors import UserError

logger = logging.getLogger("asl_platform")


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (sections: data, model, hands, tune, train, serve, inference, "
                        "run, tracking)")
    parser.add_argument("--data", action="append", help="image folder or s3:// prefix (sets data.root); repeat it to "
                        "train on several folders (classes matched by name, each split on its own)")
    parser.add_argument("--backbone", help="sets model.backbone (resnet50, efficientnet_lite0, tiny)")
    parser.add_argument("--output", help="sets run.output_dir")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override any config key, e.g. --set train.lr=0.001 (repeatable)",
    )


def resolve_config(args: argparse.Namespace, extra: dict[str, str | None] | None = None) -> Config:
    """File (or, with neither --config nor --data, the built-in smoke config) + flags + --set."""
    path = args.config
    if path is None and args.data is None and args.command in ("pipeline", "tune", "train"):
        path = builtin_config_path("smoke")
        logger.info("no --config/--data: using the built-in smoke config %s", path)
    data = args.data[0] if args.data and len(args.data) == 1 else args.data
    flags = {"data.root": data, "model.backbone": args.backbone, "run.output_dir": args.output, **(extra or {})}
    return load_config(path, args.overrides, values={k: v for k, v in flags.items() if v is not None})


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from asl_platform.pipeline import format_summary, run_pipeline

    cfg = resolve_config(args)
    result = run_pipeline(cfg)
    print(format_summary(result, smoke=cfg.data.root is None))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from asl_platform.pipeline import run_tune

    best_config_path, rows = run_tune(resolve_config(args), resume=args.resume)
    done = [row for row in rows if "best_val_loss" in row]
    print(f"\n{len(done)}/{len(rows)} trials finished; best val accuracy "
          f"{done[0]['best_val_accuracy']:.2%} (val loss {done[0]['best_val_loss']:.4f})" if done else "no trial finished")
    print(f"best config: {best_config_path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from asl_platform.pipeline import run_train

    summary = run_train(resolve_config(args))
    metrics = summary["metrics"]
    print(f"\nmodel: {summary['model_dir']}")
    for key in ("test_accuracy", "cross_domain_accuracy", "val_accuracy"):
        if key in metrics:
            print(f"  {key:<22}: {metrics[key]:.2%}")
    print(f"  {'train images/s':<22}: {summary['train_images_per_second']}")
    return 0


MODEL_HELP = ("model directory, or a models folder (its 'latest'); local, or s3:// / gs:// (fetched once per node), or "
              "a registered version: models:/<name>/<version> or models:/<name>@<alias>")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from asl_platform.data.storage import is_remote
    from asl_platform.model import model_location, resolve_model_dir
    from asl_platform.stages.evaluate import evaluate_folder

    location = model_location(args.model)
    if args.output:
        output = Path(args.output)
    elif is_remote(location):
        output = Path("eval") / f"{Path(location).parent.name}-{Path(location).name}"  # not into a node's model cache
    else:
        output = resolve_model_dir(location) / "eval"
    report = evaluate_folder(location, args.data[0] if len(args.data) == 1 else args.data, split=args.split, output_dir=output,
                             use_gpu=args.use_gpu, inference=_inference(args), calibration_shots=args.calibration_shots,
                             calibration_draws=args.calibration_draws)
    print(f"\n{report['images']} images: accuracy {report['accuracy']:.2%}, loss {report['loss']:.4f}, "
          f"macro F1 {report['macro_f1']:.4f}")
    if "coverage" in report:
        print(f"confident answers (probability >= {report['confidence_threshold']:.2f}): "
              f"{report['confident_accuracy']:.2%} right, {report['coverage']:.1%} of the images")
    if "calibration" in report:
        calibration = report["calibration"]
        print(f"calibrated with {calibration['shots']} image(s) per letter per {calibration['calibrated_per']} "
              f"(mean of {calibration['draws']} draws): {calibration['accuracy']:.2%} (model alone "
              f"{calibration['accuracy_uncalibrated']:.2%} on the same {calibration['images_answered']} images)"
              + (f"; mean person {calibration['mean_person']:.2%}, worst {calibration['worst_person']} "
                 f"{calibration['worst_person_accuracy']:.2%}" if "mean_person" in calibration else ""))
    print("report: " + ", ".join(str(path) for path in report.get("files", {}).values()))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from asl_platform.serving.deployments import start

    cfg = resolve_config(args, {"serve.model": args.model})
    if cfg.serve.model and cfg.serve.model.startswith("models:/"):  # the registry this config's tracking names
        from asl_platform.tracking import resolve_registered

        cfg.serve.model = resolve_registered(cfg.serve.model, cfg.tracking, cfg.run.output_dir)
    start(cfg)
    return 0


def _cmd_predict_batch(args: argparse.Namespace) -> int:
    from asl_platform.batch_predict import format_summary, predict_batch, watch

    if args.max_polls is not None and not args.watch:
        logger.error("--max-polls only applies with --watch")
        return 2
    if args.settle is not None and not args.watch:
        logger.error("--settle only applies with --watch")
        return 2
    common = {"batch_size": args.batch_size, "use_gpu": args.use_gpu, "inference": _inference(args)}
    if args.watch:
        result = watch(args.model, args.input, args.output, interval=args.interval, max_polls=args.max_polls,
                       settle_s=args.settle, **common)
    else:
        result = predict_batch(args.model, args.input, args.output, **common)
    print("\n" + format_summary(result))
    return 0


def _add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """The inference section's runtime keys, for the commands that take a model rather than a config."""
    parser.add_argument("--runtime", choices=("auto", "onnxruntime", "torch"), default="auto",
                        help="what runs the image model (default auto: ONNX Runtime on CPU, torch on GPU)")
    parser.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto",
                        help="ONNX Runtime: int8 where the model card says it kept its accuracy (auto), or force one")
    parser.add_argument("--threads", type=_positive_int, help="threads per inference actor (default: its CPUs)")


def _inference(args: argparse.Namespace) -> InferenceConfig:
    return InferenceConfig(runtime=args.runtime, precision=args.precision, threads=args.threads)


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from asl_platform.stages.onnx_export import add_onnx

    onnx = add_onnx(args.model, args.cross_domain, InferenceConfig(quantization_images=args.quantization_images,
                                                                  int8_max_accuracy_drop=args.int8_max_drop / 100))
    for name, score in onnx.scores.items():
        print(f"{name}, {score.summary()}")
    print(f"int8 {'used' if onnx.int8_usable else 'not used'}: {onnx.int8_verdict}")
    return 0


def _cmd_check_redis(args: argparse.Namespace) -> int:
    from asl_platform.gcs_store import check_redis

    password = os.environ.get(args.password_env) if args.password_env else None
    check_redis(args.address, password, timeout_s=args.timeout)
    print(f"Redis at {args.address} answers{' with the password' if password else ''}")
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    """The registry's versions with the figures their cards record (in-domain test, other people)."""
    from asl_platform.model.card import ModelCard
    from asl_platform.tracking import registered_versions, tracking_uri

    cfg = resolve_config(args)
    versions = registered_versions(cfg.tracking, cfg.run.output_dir)
    if not versions:
        print(f"no registered model in {tracking_uri(cfg.tracking, cfg.run.output_dir)}")
        return 0

    def share(metrics: dict, key: str) -> str:
        value = metrics.get(key)
        return f"{value:.1%}" if isinstance(value, (int, float)) else "-"

    print(f"{'model':32} {'card':6} {'test':>7} {'other people':>13}  folder")
    for version in versions:
        try:
            metrics = ModelCard.load(Path(version.source)).metrics
        except (OSError, ValueError):
            metrics = {}
        aliases = f" @{','.join(version.aliases)}" if getattr(version, "aliases", None) else ""
        print(f"{f'models:/{version.name}/{version.version}{aliases}':32} "
              f"{(version.tags or {}).get('card_version', '-'):6} {share(metrics, 'test_accuracy'):>7} "
              f"{share(metrics, 'cross_domain_accuracy'):>13}  {version.source}")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    if args.reference:
        print(config_reference(), end="")
        return 0
    print(resolve_config(args).to_yaml(), end="")
    return 0


class _Renamed(argparse.Action):
    """A flag that was renamed: refused with the new name, not silently ignored or guessed."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, nargs="?", **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is now {self.new} (\"calibration\" names a learner's profile only)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {text})")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {text})")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (got {text})")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asl-platform", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (training epoch lines from Ray workers show either way)")
    commands = parser.add_subparsers(dest="command", required=True)
    pipeline = commands.add_parser(
        "pipeline", help="ingest -> features -> tune -> retrain -> evaluate -> export, on local Ray"
    )
    _add_config_arguments(pipeline)
    pipeline.set_defaults(handler=_cmd_pipeline)
    tune = commands.add_parser("tune", help="ASHA hyperparameter search on cached features (ingest -> features -> tune)")
    _add_config_arguments(tune)
    tune.add_argument("--resume", action="store_true", help="continue an interrupted search; finished trials are kept")
    tune.set_defaults(handler=_cmd_tune)
    train = commands.add_parser("train", help="Ray Train on the images (e.g. --config best_config.yaml), evaluate, export")
    _add_config_arguments(train)
    train.set_defaults(handler=_cmd_train)
    evaluate = commands.add_parser("evaluate", help="accuracy, per-class P/R/F1 and confusion matrix of a model on a folder")
    evaluate.add_argument("--model", required=True, help=MODEL_HELP)
    evaluate.add_argument("--data", required=True, action="append",
                          help="image folder or s3:// prefix; repeat it for a model trained on several folders")
    evaluate.add_argument("--split", choices=("all", "test"), default="all",
                          help="'test': only the held-out test split of the model's training data; 'all': every image")
    evaluate.add_argument("--output", help="report folder (default: <model>/eval; ./eval/<name>-<version> for a remote model)")
    evaluate.add_argument("--use-gpu", action="store_true", help="run inference on GPUs (one per actor)")
    evaluate.add_argument("--calibration-shots", type=_non_negative_int, default=0, metavar="K",
                          help="also calibrate to each person (file names <person>-<n>.jpg; else the whole folder) "
                               "with K of their images per letter and score the rest (hand-aware models)")
    evaluate.add_argument("--calibration-draws", type=_positive_int, default=5,
                          help="how many random draws of the calibration images to average (default 5)")
    _add_inference_arguments(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)
    serve = commands.add_parser("serve", help="HTTP API (/predict, /docs) and Gradio demo (/demo) on local Ray Serve")
    _add_config_arguments(serve)
    serve.add_argument("--model", help=MODEL_HELP + "; sets serve.model")
    serve.set_defaults(handler=_cmd_serve)
    batch = commands.add_parser("predict-batch", help="classify every file under a folder or s3:// prefix into "
                                "Parquet + CSV (each file once); --watch keeps classifying new files")
    batch.add_argument("--model", required=True, help=MODEL_HELP)
    batch.add_argument("--input", required=True, help="folder or s3:// / gs:// prefix to classify (recursively)")
    batch.add_argument("--output", required=True, help="local folder for the predictions-*.parquet parts and predictions.csv")
    batch.add_argument("--watch", action="store_true", help="keep polling for new files until Ctrl-C")
    batch.add_argument("--interval", type=_non_negative_float, default=5.0, help="seconds between polls with --watch (default 5)")
    batch.add_argument("--max-polls", type=_positive_int, help="with --watch: stop after this many polls")
    batch.add_argument("--settle", type=_non_negative_float,
                       help="with --watch: a file unmodified this many seconds is complete and taken at once; a newer "
                       "one once two polls agree on its size and time (default: 10, or --interval if longer)")
    batch.add_argument("--batch-size", type=_positive_int, default=64, help="images per inference batch (default 64)")
    batch.add_argument("--use-gpu", action="store_true", help="one GPU per inference actor")
    _add_inference_arguments(batch)
    batch.set_defaults(handler=_cmd_predict_batch)
    onnx = commands.add_parser("export-onnx", help="add model.onnx and model.int8.onnx (checked against torch) to a "
                               "model folder exported before they existed")
    onnx.add_argument("--model", required=True, help="a local model directory, or a models folder (its 'latest')")
    onnx.add_argument("--cross-domain", help="also check int8 on every image of this folder (e.g. ../shared/data/asl-webcam)")
    onnx.add_argument("--quantization-images", type=_positive_int, default=300,
                      help="training images int8's activation ranges are measured on (default 300)")
    onnx.add_argument("--calibration-images", action=_Renamed, new="--quantization-images", help=argparse.SUPPRESS)
    onnx.add_argument("--int8-max-drop", type=_non_negative_float, default=0.5,
                      help="accuracy points int8 may lose against fp32 on each set and still be used (default 0.5)")
    onnx.set_defaults(handler=_cmd_export_onnx)
    redis = commands.add_parser("check-redis", help="check the Redis a fault-tolerant head keeps the GCS in, before "
                                "`ray start --head` (docs/cluster.md, Head node loss)")
    redis.add_argument("--address", required=True, help="host:port, as RAY_REDIS_ADDRESS")
    redis.add_argument("--password-env", default="RAY_REDIS_PASSWORD", help="the environment variable holding the "
                       "password (default RAY_REDIS_PASSWORD; empty: none)")
    redis.add_argument("--timeout", type=_non_negative_float, default=3.0, help="seconds to wait (default 3)")
    redis.set_defaults(handler=_cmd_check_redis)
    models = commands.add_parser("models", help="the model registry (MLflow; the tracking section says where)")
    listing = models.add_subparsers(dest="models_command", required=True).add_parser(
        "list", help="every registered version, with its in-domain and cross-domain accuracy")
    _add_config_arguments(listing)
    listing.set_defaults(handler=_cmd_models_list)
    config = commands.add_parser("config", help="print the resolved config as YAML")
    _add_config_arguments(config)
    config.add_argument("--reference", action="store_true", help="print every key with its default and meaning instead")
    config.set_defaults(handler=_cmd_config)
    return parser


def setup_logging(verbose: bool = False) -> None:
    """Coloured log lines on a terminal, plain unwrapped lines in files and CI logs."""
    level = logging.DEBUG if verbose else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, log_time_format="%H:%M:%S")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return args.handler(args)
    except (UserError, FileNotFoundError) as exc:  # the user's to fix: a config, a path, the data, missing weights
        logger.error("%s", exc, exc_info=args.verbose)  # -v shows where, e.g. for a FileNotFoundError
        return 2


if __name__ == "__main__":
    sys.exit(main())
