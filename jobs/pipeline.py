"""`ray job submit` entrypoint for the whole pipeline; all logic lives in asl_platform.

    ray job submit --working-dir . -- python jobs/pipeline.py --config my.yaml
"""

import sys

from asl_platform.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
