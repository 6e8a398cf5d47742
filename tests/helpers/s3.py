"""A local S3 (moto's server, the ``s3_server`` fixture) as a user's code would reach it."""

from __future__ import annotations

from pathlib import Path


def s3_client(env: dict[str, str]):
    """A boto3 S3 client for the ``s3_server`` environment."""
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def upload_folder(env: dict[str, str], local: Path, bucket: str, prefix: str) -> str:
    """Copy a local folder to ``s3://bucket/prefix`` on the ``s3_server``; returns that URI."""
    client = s3_client(env)
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)
    for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
    return f"s3://{bucket}/{prefix}"
