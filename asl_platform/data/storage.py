"""Where files live: local paths and object-store URIs (``s3://``, ``gs://``) alike, through pyarrow
filesystems, and reading one file's bytes under a size limit."""

from __future__ import annotations

import functools
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from asl_platform.errors import DataError

OBJECT_STORE_SCHEMES = ("s3", "gs", "gcs")  # pyarrow paths there are "bucket/key"



@functools.lru_cache(maxsize=16)
def _remote_filesystem(scheme_and_host: str) -> pafs.FileSystem:
    """One pyarrow filesystem per ``scheme://host`` per process (creating one can be slow)."""
    return pafs.FileSystem.from_uri(scheme_and_host + "/")[0]



def strip_file_scheme(path: str | Path) -> str:
    """``file:///a/b`` -> ``/a/b``; local paths and remote URIs unchanged."""
    text = str(path)
    return urlparse(text).path if text.startswith("file://") else text



def is_remote(path: str | Path) -> bool:
    """True for ``s3://``, ``gs://`` and other non-local URIs (not for ``file://``)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")



def storage_uri(path: str) -> str:
    """Ray storage wants an absolute local path or a URI (s3://... for shared storage on a cluster)."""
    return path if is_remote(path) else str(Path(strip_file_scheme(path)).resolve())



def split_uri(path: str) -> tuple[pafs.FileSystem, str]:
    """``s3://bucket/key`` -> (S3 filesystem, ``bucket/key``); a local path -> (local fs, absolute path).

    Credentials and region come from the environment (e.g. AWS_REGION, AWS_ENDPOINT_URL), as for
    the AWS CLI; options in a ``?query`` are refused rather than silently dropped.
    """
    if "://" not in path:
        return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())
    parsed = urlparse(path)
    if parsed.query:
        raise DataError(
            f"{path}: options in the URI (?{parsed.query}) are not supported; "
            "set them in the environment instead (AWS_REGION, AWS_ENDPOINT_URL, ...)"
        )
    if parsed.scheme == "file":
        return pafs.LocalFileSystem(), parsed.path
    fs = _remote_filesystem(f"{parsed.scheme}://{parsed.netloc}")
    if parsed.scheme in OBJECT_STORE_SCHEMES:
        return fs, f"{parsed.netloc}{parsed.path}".rstrip("/")
    return fs, parsed.path.rstrip("/") or "/"



def to_uri(root: str, fs_path: str) -> str:
    """Turn a filesystem path back into what the user would type (keep the scheme and host)."""
    if "://" not in root:
        return fs_path
    parsed = urlparse(root)
    if parsed.scheme == "file":
        return fs_path
    if parsed.scheme in OBJECT_STORE_SCHEMES:
        return f"{parsed.scheme}://{fs_path}"
    return f"{parsed.scheme}://{parsed.netloc}{fs_path}"



def list_children(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(
        (info for info in infos if not info.base_name.startswith(".")), key=lambda i: i.base_name
    )



def is_hidden(path: str, below: str) -> bool:
    """A file in or under a hidden folder (``.ipynb_checkpoints/``, ``.git/``) or itself hidden."""
    return any(part.startswith(".") for part in path[len(below):].split("/") if part)



def read_bytes(path: str, max_bytes: int) -> bytes:
    if "://" not in path:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    else:
        fs, fs_path = split_uri(path)
        with fs.open_input_file(fs_path) as handle:
            data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"file is larger than the {max_bytes}-byte limit")
    return data
