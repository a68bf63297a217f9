"""Mask2Former in detectron2 (issue 24): tools/mask2former_train_net.py with Mask2Former's own mappers, through the
drop-in, on the toy world; the stand-ins that let the `maskformer2` package train without compiled ops. Synthetic
labels are followed from the store to the criterion: the mapped `instances.gt_classes` and the matcher's targets."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")
if importlib.util.find_spec("mask2former") is None:
    pytest.skip("maskformer2 is not installed (tools/setup_env.py installs it)", allow_module_level=True)

import test_detectron2_stock as stock
from detectron2.engine import default_argument_parser
from msda_reference import assert_matches_reference
from synthaug.integrations.detectron2 import mask2former as m2f
from synthaug.integrations.detectron2.catalog import SYNTHETIC_KEY, register_coco_entries
from test_detectron2_stock import (
    REAL,
    TOY,
    expected_things,
    poly_entry,
    register_sem,
    reordered_store,
    store_truth,
    unit_dataset,
)

m2f.import_mask2former()

world = stock.world  # the stock tests' toy world: 64 px data, a store of exact renders (module-scoped fixture)
ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "detectron2"
POLY_THINGS = ["triangle", "circle", "square"]  # the polygon COCO JSON's category order (test_detectron2_stock)

# The stock R-50 configs sized for a CPU test: ResNet-18 without weights, 10 queries, 3 decoder layers, one
# deformable encoder layer, 64 px, 2 images a batch, 3 iterations, no AMP (CPU), no evaluation during training.
TINY = [
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "64", "MODEL.SEM_SEG_HEAD.MASK_DIM", "64",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.HIDDEN_DIM", "64",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "10", "MODEL.MASK_FORMER.NHEADS", "4",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "128", "MODEL.MASK_FORMER.DEC_LAYERS", "3",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3",
    "SOLVER.AMP.ENABLED", "False", "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0",
    "DATALOADER.NUM_WORKERS", "0", "SYNTHAUG.RATIO", "0.5",
]  # fmt: skip
SEMANTIC = [
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "INPUT.CROP.SIZE", "(64, 64)",
    "INPUT.SIZE_DIVISIBILITY", "64", "SYNTHAUG.TASK", "sem_seg",
]  # fmt: skip
INSTANCE = ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3", "INPUT.IMAGE_SIZE", "64", "SYNTHAUG.TASK", "instance"]


def load_train_net():
    spec = importlib.util.spec_from_file_location("synthaug_m2f_train_net", ROOT / "tools" / "mask2former_train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def setup_cfg(train_net, config: str, opts: list[str]):
    """The script's own setup(): Mask2Former's and synthaug's keys, the file, the overrides, default_setup."""
    return train_net.setup(default_argument_parser().parse_args(["--config-file", str(CONFIGS / config), *opts]))


class CriterionWatch:
    """What reaches Mask2Former's criterion: each training batch's synthetic ids and mapped gt_classes (a hook on
    the model's input) and the matcher's targets (labels, mask size; the matcher runs once per decoder layer)
    with the batch's padded image size."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.batches: list[tuple[list, list, tuple[int, int]]] = []
        self.targets: list[tuple[int, list[tuple[torch.Tensor, tuple[int, int]]]]] = []
        model.register_forward_pre_hook(self.batch)
        model.criterion.matcher.register_forward_pre_hook(self.matcher)

    def batch(self, module, args) -> None:
        items, div = args[0], module.size_divisibility
        h, w = (max(d["image"].shape[-2] for d in items), max(d["image"].shape[-1] for d in items))
        padded = (-(-h // div) * div, -(-w // div) * div)
        ids, classes = [d.get(SYNTHETIC_KEY) for d in items], [d["instances"].gt_classes.clone() for d in items]
        self.batches.append((ids, classes, padded))

    def matcher(self, module, args) -> None:
        targets = [(t["labels"].clone(), tuple(t["masks"].shape[-2:])) for t in args[1]]
        self.targets.append((len(self.batches) - 1, targets))


def check_reaches_criterion(watch: CriterionWatch, expect, layers: int) -> int:
    """Every matcher call (one per decoder layer) gets its batch's gt_classes at the padded image size;
    synthetic items' classes pass `expect(sample_id, classes)`. Returns how many synthetic items were trained on."""
    assert len(watch.batches) == 3 and [b for b, _ in watch.targets] == [b for b in range(3) for _ in range(layers)]
    for b, targets in watch.targets:
        ids, classes, padded = watch.batches[b]
        assert len(targets) == len(ids)
        for gt, (labels, mask_size) in zip(classes, targets):
            assert torch.equal(labels, gt) and mask_size == padded
    seen = 0
    for ids, classes, _ in watch.batches:
        for sample_id, gt in zip(ids, classes):
            if sample_id is not None:
                expect(sample_id, gt.tolist())
                seen += 1
    return seen


# ------------------------------------------------------------------------------------- the stand-ins


def test_pure_pytorch_deformable_attention_equals_the_reference_formula():
    from mask2former.modeling.pixel_decoder.ops.functions.ms_deform_attn_func import ms_deform_attn_core_pytorch

    assert_matches_reference(ms_deform_attn_core_pytorch)


NO_COMPILED_OPS = pytest.mark.skipif(
    m2f.detectron2_compiled() or importlib.util.find_spec("MultiScaleDeformableAttention") is not None,
    reason="this machine has the compiled ops: the stand-ins are not used",
)


@NO_COMPILED_OPS
def test_the_pixel_decoder_runs_pytorch_attention_only_when_the_compiled_op_is_absent(caplog):
    """Without the op the decoder's MSDeformAttn calls the pure-PyTorch function directly (logged); with an op
    present (a stand-in module object here) the package's compiled path is left as it is."""
    import types

    from mask2former.modeling.pixel_decoder.ops.functions import ms_deform_attn_func as functions
    from mask2former.modeling.pixel_decoder.ops.modules import ms_deform_attn as modules
    from mask2former.modeling.pixel_decoder.ops.modules.ms_deform_attn import MSDeformAttn

    m2f.import_mask2former()
    assert functions.MSDA is None  # this machine has no compiled op
    assert isinstance(modules.MSDeformAttnFunction, m2f.PyTorchMSDeformAttnFunction)
    torch.manual_seed(0)
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    shapes = torch.tensor([[4, 5], [2, 3]])
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    x = torch.randn(1, 26, 16)
    ref = torch.rand(1, 26, 2, 2)
    calls = []
    core = modules.MSDeformAttnFunction.core
    modules.MSDeformAttnFunction.core = lambda *a: calls.append(1) or core(*a)
    try:
        out = layer(x, ref, x, shapes, starts)
    finally:
        modules.MSDeformAttnFunction.core = core
    assert calls == [1] and out.shape == (1, 26, 16)

    fake_functions = types.SimpleNamespace(MSDA=object(), ms_deform_attn_core_pytorch=None)
    fake_modules = types.SimpleNamespace(MSDeformAttnFunction=functions.MSDeformAttnFunction)
    caplog.clear()
    assert m2f.route_deformable_attention(fake_functions, fake_modules) == "compiled"
    assert fake_modules.MSDeformAttnFunction is functions.MSDeformAttnFunction and not caplog.records
    fake_functions.MSDA = None
    fake_functions.ms_deform_attn_core_pytorch = functions.ms_deform_attn_core_pytorch
    with caplog.at_level(logging.WARNING):
        assert m2f.route_deformable_attention(fake_functions, fake_modules) == "pytorch"
    assert "pure-PyTorch" in caplog.text
    assert isinstance(fake_modules.MSDeformAttnFunction, m2f.PyTorchMSDeformAttnFunction)


def test_the_criterion_gets_the_loss_weights_the_model_asks_for():
    """maskformer2 0.1's SetCriterion does not take MaskFormer's weight_dict: through the adapter the model builds,
    with every weight (deep supervision's per layer included) as from_config computed it."""
    train_net = load_train_net()
    cfg = setup_cfg(
        train_net, "mask2former_R50_ade20k_semantic.yaml", [*TINY, *SEMANTIC, "DATASETS.TRAIN", "('m2f_unused',)"]
    )
    model = train_net.Trainer.build_model(cfg)
    f = cfg.MODEL.MASK_FORMER
    expected = {"loss_ce": f.CLASS_WEIGHT, "loss_mask": f.MASK_WEIGHT, "loss_dice": f.DICE_WEIGHT}
    expected |= {f"{k}_{i}": v for i in range(f.DEC_LAYERS - 1) for k, v in list(expected.items())}
    assert model.criterion.weight_dict == expected and len(expected) == 9
    assert model.criterion.num_classes == 4 and model.criterion.eos_coef == f.NO_OBJECT_WEIGHT


@NO_COMPILED_OPS
def test_without_detectron2_compiled_ops_the_instance_evaluator_uses_pycocotools():
    import sys

    from pycocotools.cocoeval import COCOeval

    m2f.import_mask2former()
    assert not m2f.detectron2_compiled()
    assert sys.modules["detectron2.evaluation.fast_eval_api"].COCOeval_opt is COCOeval
    from mask2former.evaluation import instance_evaluation

    assert instance_evaluation.COCOeval_opt is COCOeval


def test_missing_maskformer2_names_the_install(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "mask2former")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match=r"maskformer2(.|\n)*tools/setup_env.py(.|\n)*--no-deps"):
        m2f.import_mask2former()


# ------------------------------------------------------------------------------------- training, semantic


@pytest.mark.slow
def test_ade20k_semantic_config_trains_with_exact_synthetic_classes_at_the_criterion(world, tmp_path):
    """The store lists the classes in another order than the dataset: what reaches the criterion is in the
    dataset's ids (the truth keeps the toy ids, which are the dataset's order)."""
    register_sem(world, "toy_sem_train", "train", TOY)
    store, truth = reordered_store(tmp_path / "store", ["square", "triangle", "background", "circle"])
    train_net = load_train_net()
    opts = [*TINY, *SEMANTIC, "DATASETS.TRAIN", "('toy_sem_train',)", "DATASETS.TEST", "()"]
    cfg = setup_cfg(train_net, "mask2former_R50_ade20k_semantic_mix.yaml", [*opts, "SYNTHAUG.STORE", str(store), "OUTPUT_DIR", str(tmp_path / "out")])  # fmt: skip
    assert cfg.INPUT.DATASET_MAPPER_NAME == "mask_former_semantic" and cfg.INPUT.COLOR_AUG_SSD

    def expect(sample_id: str, classes: list[int]) -> None:  # 64 px renders, crop 64: every class stays
        mask = truth[sample_id].mask
        assert classes == sorted(int(c) for c in np.unique(mask) if c != 255)

    items = []
    for k, batch in enumerate(train_net.Trainer.build_train_loader(cfg)):
        items += [d for d in batch if d.get(SYNTHETIC_KEY)]
        if k == 5:
            break
    assert items
    for item in items:  # the mapper's per-class masks are the render's, at most flipped
        mask = truth[item[SYNTHETIC_KEY]].mask
        expect(item[SYNTHETIC_KEY], item["instances"].gt_classes.tolist())
        for c, m in zip(item["instances"].gt_classes.tolist(), item["instances"].gt_masks.numpy()):
            assert np.array_equal(m, mask == c) or np.array_equal(m, (mask == c)[:, ::-1])

    trainer = train_net.Trainer(cfg)
    watch = CriterionWatch(trainer.model)
    trainer.train()
    assert check_reaches_criterion(watch, expect, cfg.MODEL.MASK_FORMER.DEC_LAYERS) > 0
    history = trainer.storage.histories()
    assert all(np.isfinite(history[k].latest()) for k in ("loss_ce", "loss_mask", "loss_dice", "loss_dice_1"))
    assert history["synthaug/consumed_synthetic"].latest() > 0


# ------------------------------------------------------------------------------------- training, instance


@pytest.mark.slow
@pytest.mark.parametrize("mapper", ["coco_instance_lsj", "mask_former_instance"])
def test_coco_instance_config_trains_with_dataset_ids_at_the_criterion(world, tmp_path, mapper):
    """The stock COCO config's large-scale-jitter mapper (polygons, crops that may cut instances away) and the
    MaskFormer instance mapper: synthetic instances arrive in the dataset's category ids."""
    register_coco_entries([poly_entry(world)])
    train_net = load_train_net()
    opts = [*TINY, *INSTANCE, "DATASETS.TRAIN", "('toy_poly_train',)", "DATASETS.TEST", "()"]
    opts += ["INPUT.DATASET_MAPPER_NAME", mapper, "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64"]
    cfg = setup_cfg(train_net, "mask2former_R50_coco_instance_mix.yaml", [*opts, "SYNTHAUG.STORE", str(world / "store"), "SYNTHAUG.REGISTER_COCO", f"['{poly_entry(world)}']", "OUTPUT_DIR", str(tmp_path)])  # fmt: skip
    truth = store_truth(world / "store")

    def expect(sample_id: str, classes: list[int]) -> None:
        want = expected_things(truth[sample_id], POLY_THINGS)
        if mapper == "coco_instance_lsj":  # jitter and crop may drop instances, never add or rename one
            assert all(want.count(c) >= classes.count(c) for c in classes), (classes, want)
        else:
            assert sorted(classes) == want

    trainer = train_net.Trainer(cfg)
    watch = CriterionWatch(trainer.model)
    trainer.train()
    assert check_reaches_criterion(watch, expect, cfg.MODEL.MASK_FORMER.DEC_LAYERS) > 0
    history = trainer.storage.histories()
    assert all(np.isfinite(history[k].latest()) for k in ("loss_ce", "loss_mask", "loss_dice"))


# ------------------------------------------------------------------------------------- a mapper synthaug cannot feed


def test_a_panoptic_mapper_is_named_at_start(world, tmp_path):
    """Mask2Former's panoptic mappers read `pan_seg_file_name` and `segments_info`, which synthetic items cannot
    give: the train loader fails at start naming them, not silently skipping every sample."""
    register_sem(world, "toy_sem_train", "train", TOY)
    train_net = load_train_net()
    opts = [*TINY, *SEMANTIC, "DATASETS.TRAIN", "('toy_sem_train',)", "DATASETS.TEST", "()"]
    opts += ["INPUT.DATASET_MAPPER_NAME", "mask_former_panoptic", "SYNTHAUG.STORE", str(world / "store")]
    cfg = setup_cfg(train_net, "mask2former_R50_ade20k_semantic_mix.yaml", [*opts, "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(ValueError, match=r"mask_former_panoptic reads panoptic labels \(pan_seg_file_name"):
        train_net.Trainer.build_train_loader(cfg)


def semantic_mix(tmp_path):
    """A sem_seg mix of the toy store over real dicts with annotations (REAL: one real image's dicts)."""
    from synthaug.integrations.detectron2 import build_mix

    store, _ = reordered_store(tmp_path / "s", TOY)
    return build_mix(unit_dataset("unit_stuff", "stuff_classes", TOY), str(store), "sem_seg", 0.5, real_dicts=REAL)


def test_the_probe_blames_only_dataset_fields_and_restores_random_states(tmp_path, caplog):
    """A KeyError of something else (a lookup table's 'dog') is not a missing field: logged, training goes on.
    The probe leaves numpy's, Python's and torch's random states as they were."""
    import random

    from synthaug.integrations.detectron2.loader import check_mapper_fields

    dataset = semantic_mix(tmp_path)

    def unrelated(d):
        np.random.rand(), random.random(), torch.rand(1)
        return {"lut": 1}["dog"]

    np.random.seed(5)
    random.seed(5)
    torch.manual_seed(5)
    with caplog.at_level(logging.WARNING):
        check_mapper_fields(unrelated, dataset)
    assert "fails the train mapper" in caplog.text and "'dog'" in caplog.text
    assert np.random.rand() == np.random.RandomState(5).rand()
    assert random.random() == random.Random(5).random()
    assert torch.equal(torch.rand(1), torch.rand(1, generator=torch.Generator().manual_seed(5)))

    def needs_pan(d):
        return d["pan_seg_file_name"]

    with pytest.raises(ValueError, match=r"needs the field 'pan_seg_file_name'.*neither the real dataset's dicts"):
        check_mapper_fields(needs_pan, dataset)


def test_the_probe_names_a_target_synthetic_items_do_not_get(tmp_path):
    """A mapper that gives real items `instances` (from their annotations) and sem_seg synthetic items none: the
    task does not fit the mapper, and the start says so instead of training on items without targets."""
    from synthaug.integrations.detectron2.loader import check_mapper_fields

    dataset = semantic_mix(tmp_path)

    def instance_mapper(d):
        out = {"image": torch.zeros(3, 4, 4)}
        if "annotations" in d:
            out["instances"] = len(d["annotations"])
        return out

    with pytest.raises(ValueError, match=r"gives real items 'instances' but synthetic items none(.|\n)*'sem_seg'"):
        check_mapper_fields(instance_mapper, dataset)


def test_a_task_that_does_not_fit_mask2formers_mapper_is_named(world, tmp_path):
    register_sem(world, "toy_sem_train", "train", TOY)
    train_net = load_train_net()
    opts = [*TINY, *SEMANTIC, "DATASETS.TRAIN", "('toy_sem_train',)", "DATASETS.TEST", "()"]
    opts += ["INPUT.DATASET_MAPPER_NAME", "mask_former_instance", "SYNTHAUG.STORE", str(world / "store")]
    cfg = setup_cfg(train_net, "mask2former_R50_ade20k_semantic_mix.yaml", [*opts, "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(
        ValueError, match=r"SYNTHAUG.TASK sem_seg does not fit INPUT.DATASET_MAPPER_NAME mask_former_instance"
    ):
        train_net.Trainer.build_train_loader(cfg)
