"""The package installs, keeps the core free of frameworks, and exposes its command and adapters."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import synthaug

FRAMEWORKS = ("diffusers", "transformers", "mmseg", "mmengine", "mmcv", "detectron2")


def _core_modules() -> list[str]:
    names = ["synthaug"]
    for info in pkgutil.walk_packages(synthaug.__path__, "synthaug."):
        if not info.name.startswith("synthaug.integrations"):
            names.append(info.name)
    return names


def test_import_synthaug_loads_no_framework():
    code = f"import json, sys, synthaug\nprint(json.dumps([m for m in {FRAMEWORKS!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_core_modules_import_no_framework_eagerly():
    """Every core module imports without pulling in diffusers, transformers, mmseg, mmengine, mmcv or detectron2."""
    modules = _core_modules()
    assert "synthaug.attention" in modules and "synthaug.toy.world" in modules
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps([m for m in {FRAMEWORKS!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_integrations_install_under_synthaug():
    import synthaug.integrations as integ

    assert integ.__name__ == "synthaug.integrations"
    assert integ.__file__.replace("\\", "/").endswith("integrations/__init__.py")


def test_cli_help_runs():
    out = subprocess.run([sys.executable, "-m", "synthaug.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "synthaug" in out.stdout and "demo" in out.stdout


def test_markers_registered(pytestconfig):
    markers = "\n".join(pytestconfig.getini("markers"))
    assert "slow:" in markers and "gpu:" in markers


@pytest.mark.gpu
def test_gpu_marker_runs_only_with_cuda():
    import torch

    assert torch.cuda.is_available()
    x = torch.ones(4, device="cuda", dtype=torch.float16)
    assert float((x * 2).sum()) == 8.0
