"""`ray job submit` entrypoint for batch inference; all logic lives in asl_platform.

    ray job submit --working-dir . -- python jobs/batch_predict.py \\
        --model asl_runs/models/default --input s3://my-bucket/uploads --output predictions --watch
"""

import sys

from asl_platform.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict-batch", *sys.argv[1:]]))
