"""Shared fixtures for the neu10 test suite."""

import pytest

from hw.config import NPUConfig


@pytest.fixture
def tiny():
    return NPUConfig.preset("tiny")
