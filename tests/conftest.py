"""Fixtures shared by the test modules."""

import pytest

from netfit.data import load_data


@pytest.fixture(scope="session")
def digits():
    """The offline scikit-learn digits data (8x8 images, 10 classes), loaded once per test session."""
    return load_data("digits")
