"""detectron2's own configs and mappers on the mix (issue 19): the model zoo's Mask R-CNN (yacs and LazyConfig,
default polygon masks, stock DatasetMapper), a user's trainer with its own build_train_loader and
RepeatFactorTrainingSampler, and Misc/semantic_R_50_FPN_1x. Synthetic labels are checked on mapped items
against the exact toy renders, in the real dataset's class ids."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("detectron2")

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.datasets import load_sem_seg
from detectron2.engine import DefaultTrainer
from detectron2.model_zoo import get_config_file
from synthaug.integrations.detectron2 import add_synthaug_config, build_mix, with_synthaug
from synthaug.integrations.detectron2.catalog import SYNTHETIC_KEY, register_coco_entries, rle_to_polygons
from synthaug.integrations.detectron2.loader import reachable

from synthaug.imageio import read_mask
from synthaug.mix_plan import MixPlan, PlannedSampler
from synthaug.sample import Instance, Sample
from synthaug.store import StoreWriter, create_store
from synthaug.toy.world import TOY_VOCABULARY, render_seed
from synthaug.vocabulary import IGNORE_INDEX, ClassVocabulary

ROOT = Path(__file__).resolve().parents[2]
TOY = list(TOY_VOCABULARY.names)  # background, circle, square, triangle
POLY_THINGS = ["triangle", "circle", "square"]  # the polygon COCO JSON's category order: not the store's


def write_store(root: Path, names: list[str], n: int = 8, size: int = 64) -> tuple[Path, dict[str, Sample]]:
    """A store of exact toy renders whose class i is toy class i renamed to names[i]; returns it and
    {sample id: the toy sample (toy ids)}."""
    voc = ClassVocabulary(names=tuple(names), palette=TOY_VOCABULARY.palette)
    create_store(root, voc)
    truth = {}
    with StoreWriter(root, "t", fsync=False) as w:
        for seed in range(n):
            sample = render_seed(100 + seed, size).to_sample()
            truth[w.add(sample)["id"]] = sample
    return root, truth


def reordered_store(root: Path, order: list[str], n: int = 8) -> tuple[Path, dict[str, Sample]]:
    """A store whose vocabulary lists the toy classes in `order` (ids follow it); truth keeps toy ids."""
    voc = ClassVocabulary(names=tuple(order), palette=tuple(TOY_VOCABULARY.palette[TOY.index(c)] for c in order))
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[[TOY.index(c) for c in order]] = np.arange(len(order))
    create_store(root, voc)
    truth = {}
    with StoreWriter(root, "r", fsync=False) as w:
        for seed in range(n):
            s = render_seed(200 + seed, 64).to_sample()
            moved = [Instance(int(lut[i.class_id]), i.rle, i.bbox, i.area) for i in s.instances]
            truth[w.add(Sample(s.image, lut[s.mask], moved))["id"]] = s
    return root, truth


def polygon_coco(src: Path, dst: Path) -> Path:
    """The toy COCO JSON (RLE masks) rewritten with polygons and categories in POLY_THINGS order."""
    data = json.loads(src.read_text())
    old = {c["id"]: c["name"] for c in data["categories"]}
    anns = []
    for a in data["annotations"]:
        polys = rle_to_polygons(a["segmentation"])
        if polys:
            anns.append({**a, "segmentation": polys, "category_id": POLY_THINGS.index(old[a["category_id"]]) + 1})
    data["annotations"] = anns
    data["categories"] = [{"id": i + 1, "name": n} for i, n in enumerate(POLY_THINGS)]
    dst.write_text(json.dumps(data))
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Toy data (64 px: COCO JSON with polygons, mmseg-style PNG masks) and a store of exact renders."""
    from synthaug.toy.dataset import write_toy_dataset

    root = tmp_path_factory.mktemp("d2stock")
    write_toy_dataset(root / "toy", {"train": 12, "val": 4, "test": 0}, size=64, seed=0)
    ann = root / "toy" / "annotations"
    polygon_coco(ann / "instances_train.json", ann / "instances_train_poly.json")
    for png in (root / "toy" / "ann_dir").rglob("*.png"):  # detectron2 reads sem_seg GT as greyscale ("L")
        gray = root / "toy" / "gray_dir" / png.relative_to(root / "toy" / "ann_dir")
        gray.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(read_mask(png), mode="L").save(gray)
    write_store(root / "store", TOY)
    return root


def poly_entry(world: Path) -> str:
    return f"toy_poly_train={world}/toy/annotations/instances_train_poly.json={world}/toy/img_dir"


def register_sem(world: Path, name: str, split: str, stuff: list[str]) -> str:
    if name not in DatasetCatalog.list():
        t = world / "toy"
        gt, images = str(t / "gray_dir" / split), str(t / "img_dir" / split)
        DatasetCatalog.register(name, lambda: load_sem_seg(gt, images, gt_ext="png", image_ext="png"))
        MetadataCatalog.get(name).set(stuff_classes=stuff, ignore_label=255, evaluator_type="sem_seg")
    return name


def store_truth(store: Path) -> dict[str, Sample]:
    """{sample id: sample as stored} of a store whose classes are the toy classes in toy order."""
    from synthaug.store import SampleStore

    s = SampleStore(store)
    return {r["id"]: s.read(i) for i, r in enumerate(s.records)}


def expected_things(sample: Sample, things: list[str], names: list[str] | None = None) -> list[int]:
    """The dataset category ids of a toy sample's instances: class names looked up in `things`."""
    names = names or TOY
    return sorted(things.index(names[i.class_id]) for i in sample.instances if names[i.class_id] in things)


def synthetic_items(loader, batches: int = 6) -> list[dict]:
    out = []
    for k, batch in enumerate(loader):
        out += [d for d in batch if d.get(SYNTHETIC_KEY)]
        if k + 1 >= batches:
            break
    return out


# ------------------------------------------------------------------------------------- unit: stock mapper


def stock_mapper(mask_format: str) -> DatasetMapper:
    return DatasetMapper(
        is_train=True, augmentations=[], image_format="RGB", use_instance_mask=True, instance_mask_format=mask_format
    )


def unit_dataset(name: str, key: str, classes: list[str]) -> str:
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(**{key: classes})
    return name


REAL = [{"file_name": "unused.png", "height": 64, "width": 64, "image_id": i, "annotations": []} for i in range(8)]


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_stock_mapper_gives_dataset_ids_for_a_reordered_store(tmp_path, mask_format):
    store, truth = reordered_store(tmp_path / "s", ["triangle", "background", "square", "circle"])
    things = ["circle", "square", "triangle"]
    real = unit_dataset("unit_things", "thing_classes", things)
    dataset = build_mix(real, str(store), "instance", 0.5, mask_format=mask_format, real_dicts=REAL)
    mapper, seen = stock_mapper(mask_format), 0
    for index in range(dataset.mix.n_real, len(dataset)):
        d = dataset[index]
        assert {"file_name", "height", "width", "image_id", "annotations"} <= set(d)
        ann = d["annotations"][0]
        assert isinstance(ann["segmentation"], list if mask_format == "polygon" else dict) and ann["iscrowd"] == 0
        out, sample = mapper(d), truth[d[SYNTHETIC_KEY]]
        assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), sample.image)
        assert sorted(out["instances"].gt_classes.tolist()) == expected_things(sample, things)
        if mask_format == "bitmask":
            got = out["instances"].gt_masks.tensor.numpy()
            assert all(np.array_equal(g, i.mask()) for g, i in zip(got, sample.instances))
        seen += 1
    assert seen == 8


def test_stock_mapper_gives_exact_sem_seg_ids_for_a_reordered_store(tmp_path):
    store, truth = reordered_store(tmp_path / "s", ["square", "triangle", "background", "circle"])
    real = unit_dataset("unit_stuff", "stuff_classes", TOY)
    dataset = build_mix(real, str(store), "sem_seg", 0.5, real_dicts=REAL)
    mapper = stock_mapper("bitmask")
    for index in range(dataset.mix.n_real, len(dataset)):
        d = dataset[index]
        assert "sem_seg_file_name" in d and "annotations" not in d
        out = mapper(d)
        assert np.array_equal(out["sem_seg"].numpy(), truth[d[SYNTHETIC_KEY]].mask.astype(np.int64))


def test_class_map_renames_and_ignores_store_classes(tmp_path):
    store, truth = write_store(tmp_path / "s", ["background", "Ball", "box", "Triangle"])
    real = unit_dataset("unit_stuff", "stuff_classes", TOY)
    with pytest.raises(ValueError, match=r"class vocabularies differ(.|\n)*'Ball'(.|\n)*Set class_map"):
        build_mix(real, str(store), "sem_seg", 0.5, real_dicts=REAL)
    class_map = {"Ball": "circle", "box": None}  # Triangle matches 'triangle' by its normalised name
    dataset = build_mix(real, str(store), "sem_seg", 0.5, class_map=class_map, real_dicts=REAL)
    inst_ds = build_mix(
        unit_dataset("unit_things", "thing_classes", ["circle", "square", "triangle"]),
        str(store),
        "instance",
        0.5,
        class_map={"Ball": 0, "box": ""},
        mask_format="bitmask",
        real_dicts=REAL,
    )
    mapper = stock_mapper("bitmask")
    for index in range(dataset.mix.n_real, len(dataset)):
        d = dataset[index]
        mask = truth[d[SYNTHETIC_KEY]].mask
        assert np.array_equal(mapper(d)["sem_seg"].numpy(), np.where(mask == 2, IGNORE_INDEX, mask))
        e = inst_ds[index]
        got = sorted(mapper(e)["instances"].gt_classes.tolist())
        assert got == sorted(i.class_id - 1 for i in truth[e[SYNTHETIC_KEY]].instances if i.class_id != 2)


# ------------------------------------------------------------------------------------- yacs: the model zoo


def run(cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *cmd], cwd=cwd, capture_output=True, text=True, timeout=900, env=env)


ZOO_MASK_RCNN_TINY = [
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "MODEL.RESNETS.NORM", "GN", "MODEL.BACKBONE.FREEZE_AT", "0",  # from scratch FrozenBN diverges
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.0001", "SOLVER.WARMUP_ITERS", "1",
    "DATASETS.TRAIN", "('toy_poly_train',)", "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def zoo_cfg(config: str, opts: list[str]):
    cfg = add_synthaug_config(get_cfg())
    cfg.merge_from_file(get_config_file(config))
    cfg.merge_from_list(opts)
    return cfg


def load_train_net():
    spec = importlib.util.spec_from_file_location("synthaug_train_net", ROOT / "tools" / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_zoo_mask_rcnn_yacs_with_default_polygon_masks_trains_with_dataset_ids(world, tmp_path):
    store, entries = str(world / "store"), f"['{poly_entry(world)}']"
    mix_opts = ["SYNTHAUG.STORE", store, "SYNTHAUG.RATIO", "0.5", "SYNTHAUG.REGISTER_COCO", entries]
    cfg = zoo_cfg("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", ZOO_MASK_RCNN_TINY + mix_opts)
    assert cfg.INPUT.MASK_FORMAT == "polygon"
    register_coco_entries([poly_entry(world)])
    loader = load_train_net().Trainer.build_train_loader(cfg)
    truth, items = store_truth(world / "store"), synthetic_items(loader)
    assert items
    for item in items:
        got = Counter(item["instances"].gt_classes.tolist())
        assert got and got <= Counter(expected_things(truth[item[SYNTHETIC_KEY]], POLY_THINGS))
    out = tmp_path / "out"
    done = run(
        world,
        str(ROOT / "tools" / "train_net.py"),
        "--config-file",
        get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"),
        *ZOO_MASK_RCNN_TINY,
        *mix_opts,
        "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100000", "OUTPUT_DIR", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "synthaug: iter 3: trained on" in done.stdout + done.stderr


# ------------------------------------------------------------------------------------- a user's own trainer


class MarkingMapper(DatasetMapper):
    """A user's mapper: detectron2's, marking what it made (and failing on request)."""

    fail_on: str | None = None  # "synthetic" or "real"

    def __call__(self, dataset_dict):
        if self.fail_on == ("synthetic" if SYNTHETIC_KEY in dataset_dict else "real"):
            raise RuntimeError(f"the user's mapper failed on a {self.fail_on} item")
        out = super().__call__(dataset_dict)
        out["user_mapper"] = True
        return out


@with_synthaug
class UserTrainer(DefaultTrainer):
    @classmethod
    def build_train_loader(cls, cfg):
        from detectron2.data import build_detection_train_loader

        return build_detection_train_loader(cfg, mapper=MarkingMapper(cfg, is_train=True))


def toy_cfg(world: Path, out: Path, *opts: str):
    cfg = add_synthaug_config(get_cfg())
    cfg.merge_from_file(str(ROOT / "configs" / "detectron2" / "toy_mask_rcnn_real.yaml"))
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", "('toy_poly_train',)", "DATASETS.TEST", "()", "INPUT.MASK_FORMAT", "polygon",
            "SYNTHAUG.REGISTER_COCO", [poly_entry(world)], "SYNTHAUG.STORE", str(world / "store"),
            "SYNTHAUG.RATIO", "0.5", "SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", str(out), *opts,
        ]
    )  # fmt: skip
    return cfg


def test_a_users_build_train_loader_mapper_and_repeat_factor_sampler_are_kept(world, tmp_path):
    from detectron2.data.samplers import RepeatFactorTrainingSampler
    from detectron2.utils.events import EventStorage

    store = tmp_path / "store"
    shutil.copytree(world / "store", store)
    opts = ["DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler", "SYNTHAUG.VIS_PERIOD", "1"]
    opts += ["SYNTHAUG.STORE", str(store)]
    trainer = UserTrainer(toy_cfg(world, tmp_path, *opts, "SOLVER.MAX_ITER", "4"))
    samplers = [getattr(o, "sampler", None) for o in reachable(trainer.data_loader)]
    assert any(isinstance(s, PlannedSampler) and isinstance(s.sampler, RepeatFactorTrainingSampler) for s in samplers)
    with EventStorage(0) as storage:
        items = synthetic_items(trainer.data_loader, 4)
        assert items and all(d["user_mapper"] for d in items)
        name, grid, _ = storage._vis_data[0]
        assert name == "synthaug/samples" and grid.shape[0] == 3 and grid.dtype == np.uint8
    trainer.train()
    saved = trainer.state_dict()["hooks"]["SyntheticPoolHook"]
    assert saved["consumed"]["synthetic"] == trainer.storage.history("synthaug/consumed_synthetic").latest() > 0
    planned = MixPlan.from_state(saved["plan"]).snapshots
    with StoreWriter(store, "grown", fsync=False) as w:  # a producer adds a sample before the resume
        w.add(render_seed(900, 64).to_sample())
    resumed = UserTrainer(toy_cfg(world, tmp_path, *opts, "SOLVER.MAX_ITER", "6"))
    resumed.resume_or_load(resume=True)  # counters go on from the checkpoint, not from 0; the plan is restored
    assert resumed.data_loader.consumed.state_dict() == saved["consumed"]
    restored = resumed.data_loader.mix.plan.snapshots
    assert planned and all(restored[e] == snap for e, snap in planned.items()) and "grown" not in restored[0]
    resumed.train()
    total = resumed.data_loader.consumed
    assert total.real + total.synthetic == sum(saved["consumed"].values()) + 2 * 2
    assert sorted(p.name for p in store.iterdir()) == ["segments", "store.json"]  # training wrote nothing


def served_synthetic(world: Path, out: Path, batches: int) -> list[list[str]]:
    """The synthetic sample ids of each of the first `batches` batches of the user's loader with 2 workers
    (detectron2 shards its sampler inside them, behind its aspect-ratio grouping), detectron2's seed fixed as
    cfg.SEED fixes it. Every item was drawn from the snapshot planned for its epoch (none unplanned)."""
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.events import EventStorage

    seed_all_rng(7)
    loader = UserTrainer.build_train_loader(toy_cfg(world, out, "DATALOADER.NUM_WORKERS", "2"))
    assert loader.mix.planned
    with EventStorage(0):
        ids = [sorted(d[SYNTHETIC_KEY] for d in b if d.get(SYNTHETIC_KEY)) for _, b in zip(range(batches), loader)]
    assert loader.mix.counters()["unplanned"] == 0, "items drawn from a snapshot not planned for their epoch"
    return ids


def test_two_loaders_with_2_workers_serve_the_same_synthetic_items_and_the_draw_moves_on(world, tmp_path):
    """12 real + 12 synthetic slots, 2 per batch: an epoch is 12 batches, and 4 epochs are served. Each synthetic
    item carries its epoch from the sampler, so the draw changes from epoch to epoch although nothing sets the
    epoch; the main process plans epochs ahead of the workers as it goes, so none waits for one."""
    t0 = time.monotonic()
    first = served_synthetic(world, tmp_path, 48)
    assert time.monotonic() - t0 < 60, "workers waited for epochs to be planned"
    assert first == served_synthetic(world, tmp_path, 48)
    epochs = [tuple(sorted(x for b in first[e * 12 : (e + 1) * 12] for x in b)) for e in range(4)]
    assert all(len(e) > 6 for e in epochs) and len(set(epochs)) == 4


def test_failing_synthetic_items_are_skipped_and_counted_real_errors_propagate(world, tmp_path):
    cfg = toy_cfg(world, tmp_path)
    MarkingMapper.fail_on = "synthetic"
    try:
        loader = UserTrainer.build_train_loader(cfg)
        batches = [b for _, b in zip(range(4), loader)]
        assert all(SYNTHETIC_KEY not in d for b in batches for d in b)
        assert loader.totals()["corrupt_skipped"] > 0
        MarkingMapper.fail_on = "real"
        with pytest.raises(RuntimeError, match="failed on a real item"):
            [b for _, b in zip(range(4), UserTrainer.build_train_loader(cfg))]
    finally:
        MarkingMapper.fail_on = None


# ------------------------------------------------------------------------------------- sem_seg: Misc/semantic_R_50_FPN_1x


SEMANTIC_TINY = [
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.0001",
    "SOLVER.WARMUP_ITERS", "1", "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100000",
    "DATALOADER.NUM_WORKERS", "0", "SYNTHAUG.TASK", "sem_seg", "SYNTHAUG.RATIO", "0.5",
]  # fmt: skip


def test_semantic_fpn_with_other_stuff_classes_fails_naming_the_key(world, tmp_path):
    register_sem(world, "toy_sem_other", "train", ["background", "ball", "box", "triangle"])
    opts = ["DATASETS.TRAIN", "('toy_sem_other',)", "SYNTHAUG.STORE", str(world / "store"), "OUTPUT_DIR", str(tmp_path)]
    cfg = zoo_cfg("Misc/semantic_R_50_FPN_1x.yaml", SEMANTIC_TINY + opts)
    trainer = load_train_net().Trainer
    with pytest.raises(ValueError, match=r"class vocabularies differ(.|\n)*'circle'(.|\n)*Set SYNTHAUG.CLASS_MAP"):
        trainer.build_train_loader(cfg)
    cfg.SYNTHAUG.CLASS_MAP = ["circle=ball", "square=2"]
    assert trainer.build_train_loader(cfg).mix.pool_size == 8


@pytest.mark.slow
def test_semantic_fpn_trains_on_exact_dataset_ids_and_evaluates(world, tmp_path):
    register_sem(world, "toy_sem_train", "train", TOY)
    register_sem(world, "toy_sem_val", "val", TOY)
    opts = ["DATASETS.TRAIN", "('toy_sem_train',)", "DATASETS.TEST", "('toy_sem_val',)"]
    opts += ["SYNTHAUG.STORE", str(world / "store"), "OUTPUT_DIR", str(tmp_path)]
    cfg = zoo_cfg("Misc/semantic_R_50_FPN_1x.yaml", SEMANTIC_TINY + opts)
    train_net = load_train_net()
    truth = store_truth(world / "store")
    items = synthetic_items(train_net.Trainer.build_train_loader(cfg))
    assert items
    for item in items:  # MIN_SIZE 64 on 64 px renders: no resize; a flip at most
        mask, got = truth[item[SYNTHETIC_KEY]].mask.astype(np.int64), item["sem_seg"].numpy()
        assert np.array_equal(got, mask) or np.array_equal(got, mask[:, ::-1])
    trainer = train_net.Trainer(cfg)
    trainer.train()
    assert trainer.storage.history("synthaug/consumed_synthetic").latest() > 0
    results = train_net.Trainer.test(cfg, trainer.model)
    assert "mIoU" in results["sem_seg"]

    # the trained SemanticSegmentor scores the store: per-pixel cross-entropy of its own logits, in store ids
    import torch
    import torch.nn.functional as F
    from synthaug.integrations.detectron2.scoring import Detectron2LossModel

    from synthaug.scoring import Scores, score_store

    saved = tmp_path / "config.yaml"
    saved.write_text(cfg.dump())
    scorer = Detectron2LossModel(saved, tmp_path / "model_final.pth")
    assert scorer.task == "sem_seg" and scorer.classes == TOY
    sample = next(iter(truth.values()))
    loss = scorer.pixel_loss([sample])[0]
    trainer.model.eval()
    with torch.no_grad():
        bgr = torch.as_tensor(np.ascontiguousarray(sample.image[..., ::-1]).transpose(2, 0, 1).copy())
        logits = trainer.model([{"image": bgr, "height": 64, "width": 64}])[0]["sem_seg"]
    target = torch.from_numpy(sample.mask.astype(np.int64))[None]
    assert np.allclose(loss, F.cross_entropy(logits[None], target, reduction="none")[0].numpy(), rtol=1e-4, atol=1e-4)
    path = score_store(world / "store", scorer, tag="semantic")
    header = Scores.read(path).header
    assert header["samples"] == 8 and header["class_median_loss"]["background"] is not None
    path.unlink()


# ------------------------------------------------------------------------------------- LazyConfig: the model zoo

LAZY_MIX = """
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.model_zoo import get_config
from synthaug.integrations.detectron2 import build_synthaug_train_loader

_base = get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py")
model, optimizer, lr_multiplier, train = _base.model, _base.optimizer, _base.lr_multiplier, _base.train
dataloader = _base.dataloader
dataloader.train = L(build_synthaug_train_loader)(  # the README's lines: the zoo's dataset, stock mapper, batch
    real=dataloader.train.dataset.names,
    store="{store}",
    mapper=dataloader.train.mapper,
    total_batch_size=dataloader.train.total_batch_size,
    num_workers=dataloader.train.num_workers,
    ratio=0.5,
)
# sized for a CPU test: toy data (polygon COCO JSON), 64 px, no evaluation
dataloader.train.real = "toy_poly_train"
dataloader.train.register_coco = ["{entry}"]
dataloader.train.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=64, max_size=64), L(T.RandomFlip)()]
del dataloader.evaluator
"""

LAZY_TINY = [
    "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0", "model.roi_heads.num_classes=3",
    "model.roi_heads.batch_size_per_image=32", "train.device=cpu", "train.init_checkpoint=", "optimizer.lr=0.0001",
    # from scratch (no weights here) FrozenBN diverges: GroupNorm, nothing frozen
    "model.backbone.bottom_up.stem.norm=GN", "model.backbone.bottom_up.stages.norm=GN",
    "model.backbone.bottom_up.freeze_at=0",
]  # fmt: skip


@pytest.mark.slow
def test_zoo_mask_rcnn_lazyconfig_with_the_stock_mapper_trains_with_dataset_ids(world, tmp_path):
    from detectron2.config import LazyConfig, instantiate

    config = tmp_path / "mix_lazy.py"
    config.write_text(LAZY_MIX.format(store=world / "store", entry=poly_entry(world)))
    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(config)), LAZY_TINY)
    assert cfg.dataloader.train.mapper._target_ is DatasetMapper
    loader = instantiate(cfg.dataloader.train)
    assert loader.loader is not None and not cfg.dataloader.train.mapper.get("instance_mask_format")  # polygon
    truth, items = store_truth(world / "store"), synthetic_items(loader)
    assert items
    for item in items:
        got = Counter(item["instances"].gt_classes.tolist())
        assert got and got <= Counter(expected_things(truth[item[SYNTHETIC_KEY]], POLY_THINGS))
    script = Path(importlib.util.find_spec("detectron2").origin).parents[1] / "tools" / "lazyconfig_train_net.py"
    out = tmp_path / "out"
    overrides = [*LAZY_TINY, "train.max_iter=4", "dataloader.train.log_period=2", f"train.output_dir={out}"]
    done = run(world, str(script), "--config-file", str(config), *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "synthaug: iter 4: trained on" in done.stdout + done.stderr


def test_every_training_dataset_must_have_the_same_classes(tmp_path):
    a = unit_dataset("unit_stuff", "stuff_classes", TOY)
    b = unit_dataset("unit_stuff_other", "stuff_classes", [*TOY[:3], "ball"])
    with pytest.raises(ValueError, match=r"must have the same stuff_classes"):
        build_mix([a, b], str(tmp_path), "sem_seg", 0.5, real_dicts=REAL)
    with pytest.raises(ValueError, match=r"has none; it has stuff_classes: for that task set SYNTHAUG.TASK sem_seg"):
        build_mix([a], str(tmp_path), "instance", 0.5, real_dicts=REAL)
