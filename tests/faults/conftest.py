"""Fault-injection tests: a federation of real flpg processes per test (the e2e
`federation` fixture and its teardown checks), faults injected with signals."""

from __future__ import annotations

from tests.e2e.conftest import federation, pytest_runtest_makereport

__all__ = ["federation", "pytest_runtest_makereport"]
