#!/usr/bin/env python3
"""Make the virtual environment that synthaug's demo and tests need, on a fresh machine.

Usage: ``python3 tools/setup_env.py [--venv .venv] [--route auto|official|fallback]``

Safe to re-run: every step first checks whether its result is already in place and
skips itself if so. Each step says what it does; a failing step names itself, the
package, and what to try, then exits non-zero.

Routes for the two packages that have no plain PyPI wheel for every torch:
- official (a machine with internet): mmcv with compiled ops from OpenMMLab's prebuilt
  wheels, detectron2 built from its GitHub sources (needs a compiler, CUDA optional).
- fallback (only PyPI reachable): ``mmcv-lite`` (no compiled ops; synthaug's mmseg
  integration supplies the pure-PyTorch ``point_sample`` mmseg needs) and the
  ``sal-detectron2`` wheel (upstream detectron2 commit a59f056) repacked as pure Python
  without its cp310 ``_C`` extension. Costs: no rotated boxes, no deformable or
  modulated-deformable convolution, no CCHead/PSAHead/MMSyncBN; NMS and ROIAlign come
  from torchvision, COCO evaluation from pycocotools.
``auto`` tries the official route when its hosts answer within a few seconds.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = ("torch==2.14.1", "torchvision==0.29.1")
# setuptools 81+ dropped pkg_resources, which mmengine's `mmseg::` config lookup,
# mim and detectron2.model_zoo import.
BUILD_TOOLS = ("pip>=23", "setuptools>=70,<81", "wheel>=0.40")
SAL_DETECTRON2 = "sal-detectron2==0.7.2"
DETECTRON2_GIT = "git+https://github.com/facebookresearch/detectron2.git"
MMCV_FULL = "mmcv==2.1.0"
MASKFORMER2 = "maskformer2==0.1"  # Mask2Former for detectron2 (synthaug.integrations.detectron2.mask2former)
TIMM = "timm>=1.0,<2"
MMCV_INDEX = "https://download.openmmlab.com/mmcv/dist/{cuda}/torch{torch}/index.html"


class StepFailed(RuntimeError):
    """A setup step failed; the message says which step, which package, and what to try."""


def say(msg: str) -> None:
    print(f"[setup] {msg}", flush=True)


def run(cmd: list[str], step: str, package: str, hint: str, env: dict | None = None) -> None:
    """Run one command of a step; on failure raise StepFailed naming step, package and hint."""
    say("  $ " + " ".join(cmd))
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise StepFailed(f"step '{step}' failed (exit {proc.returncode}) while installing {package}.\n  Try: {hint}")


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def probe(python: Path, code: str) -> str | None:
    """Run `code` in the venv; return its stdout stripped, or None if it fails."""
    proc = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def host_answers(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """True if a TCP connection to host:port opens within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pip(python: Path, *args: str) -> list[str]:
    return [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]


def step_venv(venv: Path) -> Path:
    python = venv_python(venv)
    if python.exists() and probe(python, "import sys; print(sys.version_info >= (3, 10))") == "True":
        say(f"venv: {venv} exists, keeping it")
        return python
    if sys.version_info < (3, 10):  # noqa: UP036 - this script may be started by an older python3
        raise StepFailed(
            f"step 'venv' needs Python >= 3.10, this is {sys.version.split()[0]}.\n  Try: run this script with python3.10 or newer."
        )
    say(f"venv: creating {venv}")
    run(
        [sys.executable, "-m", "venv", str(venv)],
        "venv",
        "venv",
        "install python3-venv (e.g. apt-get install python3-venv) and re-run.",
    )
    return python


def step_build_tools(python: Path) -> None:
    have = probe(python, "import setuptools, wheel; print(int(setuptools.__version__.split('.')[0]))")
    if have is not None and int(have) < 81:
        say("build tools: setuptools<81 and wheel present")
        return
    say("build tools: pip, setuptools<81 (keeps pkg_resources), wheel")
    run(
        pip(python, *BUILD_TOOLS),
        "build tools",
        "setuptools",
        "check that PyPI is reachable; pip config list shows the index.",
    )


def step_torch(python: Path) -> None:
    have = probe(
        python,
        "import torch, torchvision; print(torch.__version__.split('+')[0], torchvision.__version__.split('+')[0])",
    )
    want = " ".join(p.split("==")[1] for p in TORCH)
    if have == want:
        say(f"torch: torch/torchvision {have} present")
        return
    say(f"torch: installing {' '.join(TORCH)} (several minutes, ~6 GB)")
    run(
        pip(python, *TORCH),
        "torch",
        "torch/torchvision",
        "these exact versions are what synthaug is tested with; if your index lacks them, "
        "install a matching torch/torchvision pair yourself, then re-run this script.",
    )


def step_synthaug(python: Path, mmcv_route: str) -> None:
    extras = "generate,lora,dev," + ("mmseg-full" if mmcv_route == "official" else "mmseg")
    have = probe(python, "import synthaug, mmseg, diffusers, pytest; print(synthaug.__file__)")
    if (
        have is not None
        and Path(have).resolve().is_relative_to(ROOT)
        and (probe(python, "import importlib.metadata as m; print(m.version('mmcv-lite'))") is not None)
        == (mmcv_route != "official")
    ):
        say(f"synthaug: installed editable from {ROOT} with [{extras}]")
        return
    say(f"synthaug: installing editable with extras [{extras}]")
    run(
        pip(python, "-e", f"{ROOT}[{extras}]", *TORCH),
        "synthaug",
        f"synthaug[{extras}]",
        "read pip's error above; `pip install -e '.[generate,lora,mmseg,dev]'` from the repo root shows it alone.",
    )


def step_crf(python: Path) -> bool:
    """DenseCRF (optional extra 'crf'): builds from an sdist; a failure costs only refine='crf'."""
    if probe(python, "import pydensecrf.densecrf") is not None:
        say("crf: pydensecrf2 present")
        return True
    say("crf: building pydensecrf2 (optional; about a minute)")
    proc = subprocess.run(pip(python, "pydensecrf2>=1.1"))
    if proc.returncode != 0:
        say(
            "crf: pydensecrf2 did not build (needs a C++ compiler); refine='crf' is unavailable, "
            "refine='edge' works; its tests are skipped"
        )
        return False
    return True


MIM_DEPS = ("click", "colorama", "model-index", "tabulate", "pandas", "requests")


def step_mim(python: Path) -> None:
    """openmim, for `mim train mmseg CONFIG`: without its dependencies, since a plain install pulls
    openxlab, which downgrades half the environment; its CLI needs only the light ones listed."""
    if probe(python, "import mim") is not None:
        say("mim: present")
        return
    say("mim: installing openmim 0.3.9 without its openxlab dependencies")
    run(pip(python, "--no-deps", "openmim==0.3.9"), "mim", "openmim", "pip install --no-deps openmim==0.3.9")
    run(pip(python, *MIM_DEPS), "mim", " ".join(MIM_DEPS), "these are openmim's CLI dependencies")


def step_mmcv_official(python: Path) -> bool:
    """Install mmcv with compiled ops from OpenMMLab's prebuilt wheels; False if none fits."""
    if probe(python, "import mmcv._ext") is not None:
        say("mmcv: full mmcv with compiled ops present")
        return True
    info = probe(
        python,
        "import torch; print(torch.__version__.split('+')[0].rsplit('.', 1)[0], (torch.version.cuda or 'cpu').replace('.', ''))",
    )
    if info is None:
        return False
    torch_mm, cuda = info.split()
    index = MMCV_INDEX.format(cuda="cpu" if cuda == "cpu" else f"cu{cuda}", torch=torch_mm)
    say(f"mmcv: trying OpenMMLab's prebuilt {MMCV_FULL} for torch {torch_mm}, {cuda}")
    proc = subprocess.run(pip(python, "--only-binary=mmcv", MMCV_FULL, "-f", index))
    if proc.returncode != 0:
        say("mmcv: no prebuilt wheel fits this torch; taking the fallback (mmcv-lite)")
        return False
    return True


def everything_present(python: Path) -> bool:
    """True when synthaug (editable, from this checkout) and every package the tests need import."""
    where = probe(
        python,
        "import synthaug, mmseg, mim, diffusers, pytest, detectron2, fvcore, pydensecrf.densecrf, timm; "
        "import importlib.util as u; assert u.find_spec('mask2former'); print(synthaug.__file__)",
    )
    return where is not None and Path(where).resolve().is_relative_to(ROOT)


def detectron2_present(python: Path) -> bool:
    return (
        probe(python, "import detectron2, detectron2.modeling, fvcore, pycocotools; print(detectron2.__version__)")
        is not None
    )


def step_detectron2_official(python: Path) -> bool:
    if detectron2_present(python):
        say("detectron2: present")
        return True
    say("detectron2: building from GitHub (the official route; needs a C++ compiler)")
    proc = subprocess.run(pip(python, "--no-build-isolation", DETECTRON2_GIT))
    if proc.returncode != 0:
        say("detectron2: the GitHub build failed; taking the fallback (repacked sal-detectron2)")
        return False
    return True


def download_sal_detectron2(python: Path, tmpd: Path, hint: str) -> Path:
    """Download the sal-detectron2 cp310 wheel into tmpd/dl and unpack it into tmpd/src; the unpacked tree, to edit."""
    run(
        [
            str(python),
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.10",
            "-d",
            str(tmpd / "dl"),
            SAL_DETECTRON2,
        ],
        "detectron2 download",
        SAL_DETECTRON2,
        hint,
    )
    wheel = next((tmpd / "dl").glob("*.whl"))
    run(
        [str(python), "-m", "wheel", "unpack", "-d", str(tmpd / "src"), str(wheel)],
        "detectron2 unpack",
        SAL_DETECTRON2,
        hint,
    )
    return next((tmpd / "src").iterdir())


def make_pure_python(src: Path) -> None:
    """Edit the unpacked wheel into a pure-Python one that installs on any Python: no _C, tag py3-none-any, fixed deps."""
    for so in src.rglob("_C*.so"):
        so.unlink()
    dist_info = next(src.glob("*.dist-info"))
    wheel_meta = dist_info / "WHEEL"
    lines = [ln for ln in wheel_meta.read_text().splitlines() if ln and not ln.startswith(("Tag:", "Root-Is-Purelib:"))]
    wheel_meta.write_text("\n".join([*lines, "Root-Is-Purelib: true", "Tag: py3-none-any"]) + "\n")
    meta = dist_info / "METADATA"
    # The code imports fvcore and iopath, which the metadata forgot. Its numpy<2 pin predates
    # numpy 2; synthaug's detectron2 tests run it on numpy 2.x, so the pin is lifted.
    text = meta.read_text().replace(
        "Requires-Dist: numpy<2\n",
        "Requires-Dist: numpy\nRequires-Dist: fvcore<0.1.6,>=0.1.5\nRequires-Dist: iopath<0.1.10,>=0.1.7\n",
    )
    meta.write_text(text)
    (dist_info / "RECORD").write_text("")


def pack_and_install_detectron2(python: Path, tmpd: Path, src: Path, hint: str) -> None:
    """Pack the edited tree into a wheel in tmpd/out and pip-install it with the torch pins, so torch stays as it is."""
    (tmpd / "out").mkdir()
    run(
        [str(python), "-m", "wheel", "pack", "-d", str(tmpd / "out"), str(src)],
        "detectron2 pack",
        SAL_DETECTRON2,
        hint,
    )
    repacked = next((tmpd / "out").glob("*.whl"))
    run(pip(python, str(repacked), *TORCH), "detectron2 install", SAL_DETECTRON2, hint)


def step_detectron2_fallback(python: Path) -> None:
    """detectron2 without a compiler: the sal-detectron2 wheel repacked as pure Python, then checked that it imports."""
    if detectron2_present(python):
        say("detectron2: present")
        return
    say(f"detectron2: repacking {SAL_DETECTRON2} (cp310 wheel) as pure Python, without _C")
    hint = (
        "the repack needs `pip download` to reach PyPI and the `wheel` package; "
        "or install detectron2 from source: https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        src = download_sal_detectron2(python, tmpd, hint)
        make_pure_python(src)
        pack_and_install_detectron2(python, tmpd, src, hint)
    if not detectron2_present(python):
        raise StepFailed(
            "step 'detectron2' installed the wheel but `import detectron2.modeling` fails.\n  Try: run it by hand in the venv to see why."
        )


def step_mask2former(python: Path) -> None:
    """Mask2Former for detectron2 (the `maskformer2` sdist) and timm, which its Swin backbone imports. Without its
    dependencies: they are GitHub archives (detectron2 among them, installed above); without build isolation:
    its setup.py imports torch (it compiles its CUDA op only where CUDA and nvcc are present)."""
    if probe(python, "import timm, importlib.util as u; assert u.find_spec('mask2former')") is not None:
        say("mask2former: present")
        return
    say(f"mask2former: installing {MASKFORMER2} without its declared dependencies, and {TIMM}")
    hint = f"pip install '{TIMM}' && pip install --no-deps --no-build-isolation {MASKFORMER2}"
    run(pip(python, TIMM, *TORCH), "mask2former", TIMM, hint)
    run(pip(python, "--no-deps", "--no-build-isolation", MASKFORMER2), "mask2former", MASKFORMER2, hint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--venv", type=Path, default=ROOT / ".venv", help="where to make the environment (default: .venv)"
    )
    parser.add_argument(
        "--route",
        choices=("auto", "official", "fallback"),
        default=os.environ.get("SYNTHAUG_SETUP_ROUTE", "auto"),
        help="how to install mmcv and detectron2 (default: auto)",
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        python = step_venv(args.venv.resolve())
        step_build_tools(python)
        step_torch(python)
        route = args.route
        if everything_present(python):
            mmcv_route = "fallback" if probe(python, "import mmcv._ext") is None else "official"
            d2_route = "fallback" if probe(python, "import detectron2._C") is None else "official"
            say("everything is installed already")
            route = "done"
        elif route == "auto":
            online = host_answers("download.openmmlab.com") and host_answers("github.com")
            route = "official" if online else "fallback"
            say(f"route: {route} (official hosts {'answer' if online else 'do not answer'})")
        if route != "done":
            mmcv_route = "official" if route == "official" and step_mmcv_official(python) else "fallback"
            step_synthaug(python, mmcv_route)
            step_crf(python)
            step_mim(python)
            d2_route = "official" if route == "official" and step_detectron2_official(python) else "fallback"
            if d2_route == "fallback":
                step_detectron2_fallback(python)
            step_mask2former(python)
    except StepFailed as err:
        say(f"FAILED: {err}")
        return 1
    say(f"done in {time.monotonic() - start:.0f} s: mmcv route '{mmcv_route}', detectron2 route '{d2_route}'")
    if mmcv_route == "fallback" or d2_route == "fallback":
        say(
            "fallback costs: no mmcv compiled ops (CCHead, PSAHead, DCN, MMSyncBN) and no detectron2 _C "
            "(rotated boxes, deformable convs); see README 'Installing'."
        )
    say(f"use it: {python.parent / 'synthaug'} --help   or   {python} -m pytest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
