"""Shared pytest configuration for every tier.

Tests under `tests/integration/` start real processes and sockets on loopback; they are marked
`integration`, so `pytest -m "not integration"` runs only the fast tiers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: real processes and sockets on loopback (tests/integration)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)
