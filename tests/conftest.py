"""Shared test settings.

Tests that need the real data sets skip, with the reason, when ``LABKIT_DATA`` holds none (a user's
machine without the data). In CI the data must be there: a missing data root there is an error, so no
test is skipped silently.
"""
import os

import pytest


def pytest_sessionstart(session):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        from labkit.config import data_root

        if not (data_root() / "cifar10").is_dir():
            raise pytest.UsageError(
                f"CI=true but the data root {data_root()} has no cifar10/: set LABKIT_DATA to the shared data "
                "(.ci/run does this when ../shared/data exists)."
            )
