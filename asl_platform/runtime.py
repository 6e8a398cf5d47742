"""Starting (or joining) Ray: the one place every command that needs a cluster goes through.

Kept apart from training and serving so that starting a server imports nothing of the training stack.
"""

from __future__ import annotations

import os

from asl_platform.config import Config

# Defaults for a Ray this process starts or drives (a variable the user set wins).
RAY_DEFAULTS = {
    # Ray Train polls its workers at this interval; the 2 s default dominates short epochs.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    # Ray ends a worker process that idles 1 s beyond the node's CPU count. Training pauses Ray Data's
    # decoding tasks for longer than that at every epoch's end, so each epoch then started new workers,
    # each importing torch again: ~5 s of every epoch on 2 CPUs. Idle workers now wait a minute.
    "RAY_idle_worker_killing_time_threshold_ms": "60000",
}


def set_ray_defaults() -> None:
    """``RAY_DEFAULTS`` into this process's environment, which a local Ray started after it inherits."""
    for key, value in RAY_DEFAULTS.items():
        os.environ.setdefault(key, value)


def init_ray(cfg: Config | None = None, worker_logs: bool = True, metrics_port: int | None = None) -> None:
    """Connect to the cluster in RAY_ADDRESS (ray job submit sets it), else start a local Ray.

    Worker log lines are forwarded to the driver (``worker_logs``): that is how the epoch lines that
    rank 0 of a Ray Train run logs reach the user's terminal. ``metrics_port``: where a local Ray
    exports Prometheus metrics (a cluster's own ``ray start`` settings decide there).
    """
    import ray

    if ray.is_initialized():
        return
    set_ray_defaults()
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=worker_logs)
    else:
        ray.init(num_cpus=cfg.run.num_cpus if cfg else None, include_dashboard=False, configure_logging=False,
                 log_to_driver=worker_logs, **({"_metrics_export_port": metrics_port} if metrics_port else {}))
