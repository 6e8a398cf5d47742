"""`ray job submit` entrypoint for the hyperparameter search; all logic lives in asl_platform.

    ray job submit --working-dir . -- python jobs/tune.py --config my.yaml [--resume]
"""

import sys

from asl_platform.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
