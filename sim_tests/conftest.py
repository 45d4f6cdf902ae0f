"""Shared fixtures for the neu10 test suite."""

import pytest

from isa.config import NPUConfig


@pytest.fixture
def tiny():
    return NPUConfig.preset("tiny")

