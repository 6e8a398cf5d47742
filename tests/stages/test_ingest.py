"""What a pipeline's model is made from (``inputs_key``): the same config and files give the same digest;
a training setting, a file changed or added, or the cross-domain folder give another; where outputs go
and how the model is served do not count."""

from __future__ import annotations

import os

from asl_platform.config import load_config
from asl_platform.data.listing import list_images, stratified_split
from asl_platform.data.synthetic import make_smoke_dataset
from asl_platform.stages.ingest import inputs_key


def test_the_inputs_key_changes_with_what_the_model_is_made_from(tmp_path):
    root = make_smoke_dataset(tmp_path / "data", per_class=3, classes=["A", "B", "C"])
    cfg = load_config(overrides=[f"data.root={root}"])

    def key(config=cfg, cross=None) -> str:
        return inputs_key(config, stratified_split(list_images(str(root)), 0.2, 0.2, 42), cross)

    first = key()
    assert key() == first and len(first) == 64
    assert key(load_config(overrides=[f"data.root={root}", "serve.port=9000", "run.output_dir=elsewhere",
                                      "run.num_cpus=1"])) == first  # where outputs go, how it is served
    assert key(load_config(overrides=[f"data.root={root}", "train.epochs=3"])) != first
    assert key(load_config(overrides=[f"data.root={root}", "model.dropout=0.3"])) != first
    assert key(cross=list_images(str(root))) != first  # a cross-domain folder scored

    photo = root / "A" / sorted(os.listdir(root / "A"))[0]
    stat = photo.stat()
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the same bytes, touched
    touched = key()
    assert touched != first
    (root / "B" / "new.png").write_bytes((root / "B" / sorted(os.listdir(root / "B"))[0]).read_bytes())
    assert key() not in (first, touched)  # a photo added
