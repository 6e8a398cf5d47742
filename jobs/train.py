"""`ray job submit` entrypoint for training; all logic lives in asl_platform.

    ray job submit --working-dir . -- python jobs/train.py --config asl_runs/default/tune/best_config.yaml
"""

import sys

from asl_platform.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
