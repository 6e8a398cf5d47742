"""``asl-platform check-redis``: the Redis a fault-tolerant head keeps its GCS in, checked in seconds before
``ray start --head``: unreachable, the password refused, none given where one is needed, each said in words."""

from __future__ import annotations

import time

import pytest
from helpers.cluster import free_ports
from helpers.redis import running_redis

from asl_platform.errors import UserError
from asl_platform.gcs_store import check_redis


def test_an_unreachable_redis_is_a_clear_error_within_seconds():
    (port,) = free_ports(1)  # nothing listens there
    started = time.monotonic()
    with pytest.raises(UserError, match="cannot be reached.*is it running"):
        check_redis(f"127.0.0.1:{port}", "secret", timeout_s=2)
    assert time.monotonic() - started < 5
    with pytest.raises(UserError, match="expected host:port"):
        check_redis("redis.example.com", None)


def test_a_wrong_or_missing_password_is_named_and_the_right_one_passes(tmp_path, capsys):
    from asl_platform.cli import main

    with running_redis(tmp_path / "redis", free_ports(1)[0]) as redis:
        check_redis(redis.address, redis.password)
        with pytest.raises(UserError, match="refused the password"):
            check_redis(redis.address, "wrong")
        with pytest.raises(UserError, match="needs a password"):
            check_redis(redis.address, None)
        assert main(["check-redis", "--address", redis.address, "--password-env", ""]) == 2
        assert "needs a password" in capsys.readouterr().err
