"""mmseg's own stock configs (SegFormer ADE20K, PSPNet Cityscapes, DeepLabV3+ VOC aug) with the drop-in made by
`synthaug wrap-config`, trained by mmseg's tools/train.py on tiny fake datasets in the real folder layouts.

A probe hook records the label values of every item of every batch the model trains on: synthetic items must
carry exactly the dataset's ids for the store's classes (by name, ADE20K's `reduce_zero_label` not applied twice,
ignore kept at 255), and the base config's loader settings must survive. Sizes come from --cfg-options only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mmseg")

from synthaug.cli import main as cli
from synthaug.sample import Sample
from synthaug.store import StoreWriter, create_store
from synthaug.vocabulary import ClassVocabulary

PROBE_DIR = Path(__file__).parent / "mmseg_probe"
SIZE = 64


def mmseg_train_script() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("mmseg")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / ".mim" / "tools" / "train.py"


def write_pair(img: Path, ann: Path, values: list[int], seed: int) -> None:
    """A noise image and a mask of vertical bands of `values`, written where the dataset expects them."""
    rng = np.random.default_rng(seed)
    img.parent.mkdir(parents=True, exist_ok=True)
    ann.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(img)
    bands = np.repeat(np.array(values, np.uint8), -(-SIZE // len(values)))[:SIZE]
    Image.fromarray(np.tile(bands, (SIZE, 1))).save(ann)


def fake_ade(root: Path) -> None:
    base = root / "data" / "ade" / "ADEChallengeData2016"
    for split in ("training", "validation"):
        for i in range(4):
            write_pair(base / "images" / split / f"{i}.jpg", base / "annotations" / split / f"{i}.png", [0, 1, 8], i)


def fake_cityscapes(root: Path) -> None:
    base = root / "data" / "cityscapes"
    for split in ("train", "val"):
        for i in range(4):
            stem = f"city_000000_{i:06d}"
            write_pair(
                base / "leftImg8bit" / split / "city" / f"{stem}_leftImg8bit.png",
                base / "gtFine" / split / "city" / f"{stem}_gtFine_labelTrainIds.png",
                [0, 13, 255],
                i,
            )


def fake_voc(root: Path) -> None:
    base = root / "data" / "VOCdevkit" / "VOC2012"
    sets = base / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    for name, folder, ids in (
        ("train", "SegmentationClass", "ab"),
        ("aug", "SegmentationClassAug", "cd"),
        ("val", "SegmentationClass", "ab"),
    ):
        (sets / f"{name}.txt").write_text("".join(f"img_{c}\n" for c in ids))
        for k, c in enumerate(ids):
            write_pair(base / "JPEGImages" / f"img_{c}.jpg", base / folder / f"img_{c}.png", [0, 8, 255], k)


def fake_store(path: Path, names: list[str], background: str | None) -> None:
    """8 samples whose masks are bands of every store class (ids 0..3) with an ignore stripe."""
    palette = [(40 * i, 255 - 40 * i, 90) for i in range(len(names))]
    create_store(path, ClassVocabulary(tuple(names), tuple(palette), background=background))
    bands = np.repeat(np.arange(len(names), dtype=np.uint8), SIZE // len(names))
    with StoreWriter(path, "fake", fsync=False) as w:
        for s in range(8):
            mask = np.tile(np.roll(bands, 4 * s), (SIZE, 1))
            mask[SIZE // 2 - 2 : SIZE // 2 + 2] = 255
            image = np.random.default_rng(100 + s).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
            w.add(Sample(image, mask, [], "a fake sample", s, {"mean_confidence": 0.9}, {"model": "test"}))


MASK2FORMER_CPU = [
    "model.backbone.init_cfg=None", "model.backbone.depth=18", "model.decode_head.in_channels=[64,128,256,512]",
    "model.decode_head.num_queries=10", "model.decode_head.transformer_decoder.num_layers=3",
    "model.decode_head.pixel_decoder.encoder.num_layers=1", "model.decode_head.train_cfg.num_points=256",
]  # fmt: skip
CASES = {
    # config, fake data, store classes (background), expected dataset id of each store class, extra options
    "segformer_ade20k": (
        "mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py",
        fake_ade,
        (["wall", "bed", "person", "sky"], None),  # ADE's own names (its 'bed ' has a space); no background
        [0, 7, 12, 2],
        ["model.backbone.init_cfg=None", "train_dataloader.dataset.real.pipeline.2.scale=(64,32)",
         "train_dataloader.dataset.real.pipeline.3.crop_size=(32,32)", "model.data_preprocessor.size=(32,32)"],
    ),
    "pspnet_cityscapes": (
        "mmseg::pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
        fake_cityscapes,
        (["background", "road", "Car", "pedestrian"], "background"),
        [255, 0, 13, 11],  # background: not a Cityscapes class -> ignore; pedestrian -> person by class_map
        ["model.pretrained=None", "train_dataloader.dataset.real.pipeline.2.scale=(64,32)",
         "train_dataloader.dataset.real.pipeline.3.crop_size=(32,32)", "model.data_preprocessor.size=(32,32)",
         "train_dataloader.dataset.class_map.pedestrian=person"],
    ),
    "deeplabv3plus_voc12aug": (
        "mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb4-20k_voc12aug-512x512.py",
        fake_voc,
        (["background", "cat", "dog", "person"], "background"),
        [0, 8, 255, 15],  # dog -> ignore by class_map
        ["model.pretrained=None", "model.data_preprocessor.size=(32,32)", "train_dataloader.dataset.class_map.dog=None",
         *(f"train_dataloader.dataset.real.datasets.{d}.pipeline.{k}" for d in (0, 1) for k in
           ("2.scale=(64,32)", "3.crop_size=(32,32)", "6.size=(32,32)"))],
    ),
    # Mask2Former through mmdet (on mmcv-lite: synthaug's stand-in ops, pure-PyTorch deformable attention),
    # CPU-sized: ResNet-18 without weights, 10 queries, 3 decoder layers, 1 encoder layer, 256 sampled points.
    "mask2former_ade20k": (
        "mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py",
        fake_ade,
        (["wall", "bed", "person", "sky"], None),
        [0, 7, 12, 2],
        [*MASK2FORMER_CPU, "train_dataloader.dataset.real.pipeline.2.scales=[64]",
         "train_dataloader.dataset.real.pipeline.3.crop_size=(32,32)", "model.data_preprocessor.size=(32,32)"],
    ),
    "mask2former_cityscapes": (
        "mmseg::mask2former/mask2former_r50_8xb2-90k_cityscapes-512x1024.py",
        fake_cityscapes,
        (["background", "road", "Car", "pedestrian"], "background"),
        [255, 0, 13, 11],
        [*MASK2FORMER_CPU, "train_dataloader.dataset.real.pipeline.2.scales=[64]",
         "train_dataloader.dataset.real.pipeline.3.crop_size=(32,32)", "model.data_preprocessor.size=(32,32)",
         "train_dataloader.dataset.class_map.pedestrian=person"],
    ),
}  # fmt: skip


REAL_IDS = {"segformer_ade20k": {255, 0, 7}, "pspnet_cityscapes": {0, 13, 255}, "deeplabv3plus_voc12aug": {0, 8, 255}}
REAL_IDS |= {
    "mask2former_ade20k": REAL_IDS["segformer_ade20k"],
    "mask2former_cityscapes": REAL_IDS["pspnet_cityscapes"],
}


def run_case(tmp: Path, name: str, iters: int = 6, probe: bool = True) -> tuple[subprocess.CompletedProcess, Path]:
    """Fake data and store in `tmp`, the mix config by `synthaug wrap-config`, then mmseg's train.py on it."""
    config, make_data, (names, background), _, options = CASES[name]
    make_data(tmp)
    if not (tmp / "data" / "store").exists():
        fake_store(tmp / "data" / "store", names, background)
    mix = tmp / f"{name}_mix.py"
    assert cli(["wrap-config", config, "--store", "data/store", "--ratio", "0.5", "-o", str(mix)]) == 0
    if probe:  # test instrumentation on top of the mix config: the probe hook, nothing else
        probed = tmp / f"{name}_probed.py"
        probed.write_text(
            f"_base_ = [{mix.name!r}]\n"
            "custom_imports = dict(imports=['synthaug.integrations.mmseg', 'label_probe'], allow_failed_imports=False)\n"
            "default_hooks = dict(label_probe=dict(type='LabelProbe'))\n"
        )
        mix = probed
    work = tmp / "work"
    cmd = [sys.executable, str(mmseg_train_script()), str(mix), "--work-dir", str(work), "--cfg-options", *options]
    cmd += [f"train_cfg.max_iters={iters}", "train_cfg.val_begin=100", "default_hooks.logger.interval=2"]
    cmd += ["default_hooks.checkpoint.interval=100"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROBE_DIR)}
    done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done, work / mix.name


def store_state(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_stock_config_trains_on_synthetic_labels_in_the_dataset_id_space(tmp_path, name):
    from mmengine.config import Config
    from synthaug.integrations.mmseg.wrap_config import load

    config, _, _, expected, _ = CASES[name]
    done, dumped_config = run_case(tmp_path, name)
    rows = [json.loads(x) for x in (dumped_config.parent / "label_probe.jsonl").read_text().splitlines()]
    synthetic = [r for r in rows if r["synthetic"]]
    real = [r for r in rows if not r["synthetic"]]
    assert synthetic and real, f"{len(synthetic)} synthetic and {len(real)} real items trained on"
    allowed, seen = set(expected) | {255}, set()
    for r in synthetic:
        assert set(r["values"]) <= allowed, f"synthetic labels {r['values']} outside {sorted(allowed)}"
        seen |= set(r["values"]) - {255}
    assert len(seen) >= 2, f"synthetic items showed only {seen} of {sorted(set(expected) - {255})}"
    for r in real:  # the real pipeline is untouched (ADE20K's reduce_zero_label: 0 -> 255, 1 -> 0, 8 -> 7)
        assert set(r["values"]) <= REAL_IDS[name], r
    # The base's loader settings survive the drop-in (appending it used to replace batch_size and num_workers).
    dumped = Config.fromfile(str(dumped_config), import_custom_modules=False).train_dataloader
    base = load(config).train_dataloader
    assert (dumped.batch_size, dumped.num_workers) == (base.batch_size, base.num_workers)
    assert len(rows) == 6 * base.batch_size
    log = done.stdout + done.stderr
    assert "synthaug_synthetic_share" in log and "differs" not in log
    if name.startswith("mask2former"):  # mmdet's Mask2Former head trained (its mask and dice losses are logged)
        assert "decode.loss_dice" in log and "decode.loss_mask" in log, log[-3000:]


@pytest.mark.slow
def test_training_writes_nothing_into_the_store(tmp_path):
    """A read-only store trains: the run leaves every file of the store as it was, and adds none."""
    _, _, (names, background), _, _ = CASES["segformer_ade20k"]
    fake_store(tmp_path / "data" / "store", names, background)
    before = store_state(tmp_path / "data" / "store")
    (tmp_path / "data" / "store").chmod(0o555)
    try:
        run_case(tmp_path, "segformer_ade20k", iters=2, probe=False)
    finally:
        (tmp_path / "data" / "store").chmod(0o755)
    assert store_state(tmp_path / "data" / "store") == before


def test_a_drop_in_appended_to_a_config_is_reported_at_start(tmp_path):
    """The README block appended to a stock config replaces its train_dataloader; the hook says what was lost."""
    from mmengine.config import Config
    from synthaug.integrations.mmseg.hooks import loader_differences

    (tmp_path / "base.py").write_text("train_dataloader = dict(batch_size=4, num_workers=4, dataset=dict(type='X'))\n")
    user = tmp_path / "user.py"
    user.write_text(
        "_base_ = ['base.py']\n"
        "train_dataloader = dict(batch_size=2, num_workers=2)\n"
        "train_dataloader = dict(dataset=dict(_delete_=True, type='SyntheticMixSegDataset'))\n"
    )
    lines = loader_differences(Config.fromfile(str(user)))
    assert any("train_dataloader is assigned 2 times" in x and "batch_size, num_workers are lost" in x for x in lines)
    user.write_text("_base_ = ['base.py']\ntrain_dataloader = dict(batch_size=8)\n")
    (line,) = loader_differences(Config.fromfile(str(user)))
    assert "train_dataloader.batch_size is 8" in line and "but 4 in its base" in line
    user.write_text("_base_ = ['base.py']\ntrain_dataloader = dict(dataset=dict(_delete_=True, type='Y'))\n")
    assert loader_differences(Config.fromfile(str(user))) == []
