"""The end-to-end fixtures (a `Federation` of real flpg processes per test) for the
Flower-compatibility tests."""

from __future__ import annotations

from tests.e2e.conftest import federation, pytest_runtest_makereport

__all__ = ["federation", "pytest_runtest_makereport"]
