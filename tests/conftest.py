"""Fixtures shared by the test modules."""

import pytest

from netfit.data import load_data


@pytest.fixture(scope="session")
def digits():
    """The offline scikit-learn digits data (8x8 images, 10 classes), loaded once per test session."""
    return load_data("digits")


@pytest.fixture(scope="session", autouse=True)
def tuning_cache(tmp_path_factory):
    """Measured choices (``netfit.tuning``) go to a cache of the test session, not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NETFIT_CACHE_DIR", str(tmp_path_factory.mktemp("netfit-cache")))
        yield
