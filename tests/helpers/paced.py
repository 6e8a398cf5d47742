"""Training paced by the test, not by the machine's speed.

A test that must act *while* a trial or a Ray Train worker is mid-run (lose a node, kill a worker, press
Ctrl+C) cannot rely on the run being slow enough: on a fast machine it ends first, on a slow one the
test waits longer than it needs. Instead the run holds at a chosen report until the test releases it:

    python tests/helpers/paced.py --hold-dir DIR --hold 1 --at-report 2 -- jobs/tune.py --config ...
    python tests/helpers/paced.py --hold-dir DIR --hold 0,1 --at-report 1 -- asl-platform train --config ...

runs the script (or the ``asl-platform`` command line) with every Tune trial (``search_trial``) and every
Ray Train worker (``train_loop_per_worker``) wrapped. Each process that starts one claims the next number
(0, 1, 2, ... in the order they start, by atomic file creation in DIR, which every node of a local
cluster shares). The processes whose number is in ``--hold`` stop right after their ``--at-report``-th
report (so that report, and its checkpoint, are already handed to Ray), write ``DIR/holding-<n>`` and
wait until ``DIR/release`` exists. A trial or worker that is started again (after a lost node or a killed
worker) claims a new number, so it runs through. Nothing of this is in the package: the run is the
command's own in every other respect.
"""

from __future__ import annotations

import argparse
import runpy
import sys
import time
from pathlib import Path

HOLD_LIMIT_S = 600  # a test that never releases must not leave a run hanging for ever


def release(hold_dir: Path) -> None:
    """Let every holding process go on (and any that would hold later)."""
    (Path(hold_dir) / "release").write_text(f"{time.time()}\n")


def holding(hold_dir: Path) -> list[int]:
    """The numbers of the processes that are holding now (or held before the release)."""
    return sorted(int(path.name.split("-")[1]) for path in Path(hold_dir).glob("holding-*"))


def paced(function, module_name: str, hold_dir: str, hold: frozenset[int], at_report: int):
    """``function`` (a trial or a worker loop) with its ``module_name.report`` held as described above.

    Self-contained: Ray pickles it by value to the workers, where this file is not importable."""

    def run(*args, **kwargs):
        import importlib
        import json
        import os
        import time
        from pathlib import Path

        directory = Path(hold_dir)
        number = 0
        while True:  # the lowest free number, claimed atomically
            try:
                os.close(os.open(directory / f"started-{number}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                break
            except FileExistsError:
                number += 1
        module = importlib.import_module(module_name)
        real, reports = module.report, 0

        def report(*report_args, **report_kwargs):
            nonlocal reports
            result = real(*report_args, **report_kwargs)
            reports += 1
            if number in hold and reports == at_report and not (directory / "release").exists():
                (directory / f"holding-{number}").write_text(json.dumps({"pid": os.getpid(), "time": time.time()}))
                deadline = time.monotonic() + HOLD_LIMIT_S
                while not (directory / "release").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
            return result

        module.report = report
        try:
            return function(*args, **kwargs)
        finally:
            module.report = real

    # Only the name (Tune names trials after it): functools.wraps would also copy the module and qualified
    # name, and Ray would then pickle this by reference, as the unpaced original.
    run.__name__ = function.__name__
    return run


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hold-dir", required=True, type=Path)
    parser.add_argument("--hold", required=True, help="comma-separated process numbers that hold (0 = the first)")
    parser.add_argument("--at-report", type=int, default=1, help="hold right after this report (1 = the first)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then a script path, or asl-platform and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    hold, hold_dir = frozenset(int(n) for n in args.hold.split(",")), str(args.hold_dir.resolve())
    args.hold_dir.mkdir(parents=True, exist_ok=True)

    import asl_platform.training.search as search
    import asl_platform.training.trainer as trainer

    search.search_trial = paced(search.search_trial, "ray.tune", hold_dir, hold, args.at_report)
    trainer.train_loop_per_worker = paced(trainer.train_loop_per_worker, "ray.train", hold_dir, hold, args.at_report)
    if command[0] == "asl-platform":
        from asl_platform.cli import main as cli

        return cli(command[1:])
    sys.argv = command
    runpy.run_path(command[0], run_name="__main__")  # a jobs/ script ends in sys.exit(main(...))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
