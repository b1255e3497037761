import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    """Two threads (the CI machine has two cores; more oversubscribes) and a fixed seed per test."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    yield
