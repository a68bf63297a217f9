"""Shared test set-up: offline libraries, the gpu marker, and the shipped toy model."""

from __future__ import annotations

import os

# Nothing may download: make the Hugging Face libraries fail rather than reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def toy_model():
    """The shipped toy model, loaded once per session from the package folder."""
    from synthaug.generator import load_model

    return load_model()
