"""Shared test set-up: offline libraries, the gpu marker, and the shipped toy model."""

from __future__ import annotations

import os
import signal
import warnings
from pathlib import Path

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


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid`, read from /proc (Linux); [] where /proc is not there."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":  # a zombie is already dead; its parent reaps it
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test(request):
    """A test that fails half-way must not leave its helper processes running (a writer left writing for the
    rest of the run fills the disk and starves every later test): after each test, processes it started from
    another program (not forks of pytest such as DataLoader workers, nor multiprocessing's helpers) are killed
    and named in a warning."""
    yield
    own = Path(f"/proc/{os.getpid()}/cmdline")
    if not own.exists():
        return
    mine = own.read_bytes()
    stray = []
    for pid in _descendants(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if cmdline == mine or b"multiprocessing" in cmdline:  # forks, and Python's own resource tracker
                continue
            os.kill(pid, signal.SIGKILL)
            stray.append(pid)
        except OSError:
            continue
    if stray:
        warnings.warn(f"{request.node.nodeid} left processes {stray} running; they were killed", stacklevel=1)
