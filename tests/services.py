"""What the tests of system services (PostgreSQL, SLURM) share: skip without them, fail under CI; ports."""

from __future__ import annotations

import os
import socket

import pytest


def under_ci() -> bool:
    """Whether the CI variable is set to something true (CI=true, as CI services and .ci/run set it)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def unavailable(service: str, reason: str) -> None:
    """Skip the test, or fail it under CI, where the service must be there."""
    if under_ci():
        pytest.fail(f"{service} tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"{service} tests skipped: {reason}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
