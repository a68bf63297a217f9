"""`synthaug wrap-config`: the drop-in written for the user's own config, inheriting everything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthaug.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


def test_yacs_config_gets_a_yaml_that_inherits_it(tmp_path, capsys):
    out = tmp_path / "sub" / "mix.yaml"
    real = ROOT / "configs" / "detectron2" / "toy_mask_rcnn_real.yaml"
    assert cli(["wrap-config", str(real), "--store", "data/s", "--ratio", "0.3", "-o", str(out)]) == 0
    text = out.read_text()
    base = text.split('_BASE_: "')[1].split('"')[0]
    assert (out.parent / base).resolve() == real.resolve()  # detectron2 resolves _BASE_ beside the file
    assert 'STORE: "data/s"' in text and "RATIO: 0.3" in text
    assert "add_synthaug_config(cfg)" in capsys.readouterr().out


def test_yacs_task_follows_the_configs_mapper_or_model(tmp_path, capsys):
    """SYNTHAUG.TASK is read from the config's _BASE_ chain: Mask2Former's semantic mapper and detectron2's
    SemanticSegmentor train on sem_seg, instance mappers and Mask R-CNN on instances; the child's value wins, and
    YAML tags such as Mask2Former's `!!python/object/apply:eval` do not stop the reading."""
    configs = ROOT / "configs" / "detectron2"
    base = tmp_path / "base.yaml"
    base.write_text(
        'MODEL:\n  META_ARCHITECTURE: "SemanticSegmentor"\nINPUT:\n'
        '  MIN_SIZE_TRAIN: !!python/object/apply:eval ["[int(x * 0.1 * 512) for x in range(5, 21)]"]\n'
    )
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "base.yaml"\nINPUT:\n  DATASET_MAPPER_NAME: "coco_instance_lsj"\n')
    (tmp_path / "sub").mkdir()
    grandchild = tmp_path / "sub" / "grandchild.yaml"  # nothing of its own: the base's base decides
    grandchild.write_text('_BASE_: "../base.yaml"\nSOLVER:\n  MAX_ITER: 5\n')
    listed = tmp_path / "listed.yaml"  # fvcore's list of bases, merged in order: child.yaml's mapper stays
    listed.write_text('_BASE_: ["child.yaml", "base.yaml"]\n')
    maskformer = tmp_path / "maskformer.yaml"  # no mapper named: Mask2Former's default, mask_former_semantic
    maskformer.write_text('MODEL:\n  META_ARCHITECTURE: "MaskFormer"\n')
    not_a_mapping = tmp_path / "list.yaml"
    not_a_mapping.write_text("- 1\n- 2\n")
    cases = [
        (listed, "instance", "python train_net.py"),
        (maskformer, "sem_seg", "tools/mask2former_train_net.py"),
        (not_a_mapping, "instance", "python train_net.py"),
        (configs / "mask2former_R50_ade20k_semantic.yaml", "sem_seg", "tools/mask2former_train_net.py"),
        (configs / "mask2former_R50_coco_instance.yaml", "instance", "tools/mask2former_train_net.py"),
        (configs / "toy_mask_rcnn_real.yaml", "instance", "python train_net.py"),
        (base, "sem_seg", "python train_net.py"),
        (child, "instance", "python train_net.py"),
        (grandchild, "sem_seg", "python train_net.py"),
    ]
    for k, (config, task, script) in enumerate(cases):
        out = tmp_path / f"mix{k}.yaml"
        assert cli(["wrap-config", str(config), "--store", "s", "--ratio", "0.3", "-o", str(out)]) == 0
        assert f'TASK: "{task}"' in out.read_text(), config
        printed = capsys.readouterr().out
        assert script in printed and ("import_mask2former()" in printed) == ("mask2former" in script)


def test_a_panoptic_mask2former_config_is_refused_naming_the_mapper(tmp_path, capsys):
    config = tmp_path / "panoptic.yaml"
    config.write_text(
        '_BASE_: "%s"\nINPUT:\n  DATASET_MAPPER_NAME: "mask_former_panoptic"\n'
        % (ROOT / "configs" / "detectron2" / "mask2former_R50_ade20k_semantic.yaml")
    )
    out = tmp_path / "new_dir" / "mix.yaml"
    assert cli(["wrap-config", str(config), "--store", "s", "--ratio", "0.3", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "mask_former_panoptic" in err and "pan_seg_file_name" in err and "mask_former_semantic" in err
    assert not out.parent.exists()  # refused before anything is made, its folder included


def test_lazy_config_gets_the_lines_to_add(capsys):
    lazy = ROOT / "configs" / "detectron2" / "coco_mask_rcnn_R_50_FPN_mix_lazy.py"
    assert cli(["wrap-config", str(lazy), "--store", "data/s", "--ratio", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert (
        "dataloader.train = L(build_synthaug_train_loader)(" in printed and "mapper=dataloader.train.mapper" in printed
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ratio", "1.5", "-o", "x.py"], "--ratio 1.5: the expected synthetic share must be in (0, 1)"),
        (["--ratio", "0", "-o", "x.py"], "--ratio 0.0"),
    ],
)
def test_bad_ratio_names_the_option(tmp_path, capsys, args, message):
    cfg = tmp_path / "c.py"
    cfg.write_text("x = 1\n")
    assert cli(["wrap-config", str(cfg), "--store", "s", *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_config_is_named(tmp_path, capsys):
    assert cli(["wrap-config", str(tmp_path / "nope.py"), "--store", "s", "--ratio", "0.3", "-o", "x.py"]) == 2
    assert "no config file" in capsys.readouterr().err


def test_mmseg_config_keeps_its_imports_hooks_and_loader(tmp_path, capsys):
    pytest.importorskip("mmseg")
    from synthaug.integrations.mmseg.wrap_config import load

    base = tmp_path / "user.py"
    base.write_text(
        "custom_imports = dict(imports=['my_project.models'], allow_failed_imports=True)\n"
        "custom_hooks = [dict(type='EMAHook', momentum=0.001)]\n"
        "train_dataloader = dict(batch_size=3, num_workers=5, dataset=dict(type='MyDataset', data_root='d'))\n"
    )
    out = tmp_path / "mix.py"
    assert cli(["wrap-config", str(base), "--store", "st", "--ratio", "0.25", "-o", str(out)]) == 0
    cfg = load(str(out))
    assert cfg.custom_imports.imports == ["synthaug.integrations.mmseg", "my_project.models"]  # ours first
    assert cfg.custom_imports.allow_failed_imports is True
    assert [h["type"] for h in cfg.custom_hooks] == ["EMAHook", "SyntheticPoolHook"]
    loader = cfg.train_dataloader
    assert (loader.batch_size, loader.num_workers) == (3, 5)
    assert loader.dataset.type == "SyntheticMixSegDataset" and loader.dataset.ratio == 0.25
    assert loader.dataset.real == {"type": "MyDataset", "data_root": "d"}
    # Wrapping the result again is refused; an mmseg config must be written as a .py file.
    assert cli(["wrap-config", str(out), "--store", "st", "--ratio", "0.25", "-o", str(tmp_path / "again.py")]) == 2
    assert "already mixes synthetic samples" in capsys.readouterr().err
    assert cli(["wrap-config", str(base), "--store", "st", "--ratio", "0.25", "-o", str(tmp_path / "m.txt")]) == 2
    assert "an mmseg config is a Python file" in capsys.readouterr().err


def test_nothing_is_overwritten_least_of_all_the_users_config(tmp_path, capsys):
    cfg = tmp_path / "user.yaml"
    cfg.write_text("SOLVER:\n  MAX_ITER: 10\n")
    before = cfg.read_text()
    assert cli(["wrap-config", str(cfg), "--store", "s", "--ratio", "0.3", "-o", str(cfg)]) == 2
    assert "that is the config to wrap itself" in capsys.readouterr().err and cfg.read_text() == before
    other = tmp_path / "taken.yaml"
    other.write_text("keep: me\n")
    assert cli(["wrap-config", str(cfg), "--store", "s", "--ratio", "0.3", "-o", str(other)]) == 2
    assert "the file exists" in capsys.readouterr().err and other.read_text() == "keep: me\n"


def test_a_store_path_with_quotes_is_valid_yaml(tmp_path):
    import yaml

    cfg = tmp_path / "user.yaml"
    cfg.write_text("SOLVER:\n  MAX_ITER: 10\n")
    store = '/data/a"b: c'
    assert cli(["wrap-config", str(cfg), "--store", store, "--ratio", "0.3", "-o", str(tmp_path / "mix.yaml")]) == 0
    assert yaml.safe_load((tmp_path / "mix.yaml").read_text())["SYNTHAUG"]["STORE"] == store


def test_the_word_detectron2_in_a_comment_does_not_make_a_lazyconfig(tmp_path):
    from synthaug.wrap_config import config_kind

    mm = tmp_path / "mm.py"
    mm.write_text("# ported from a detectron2 recipe\nmodel = dict(type='EncoderDecoder')\n")
    lazy = tmp_path / "lazy.py"
    lazy.write_text("from detectron2.config import LazyCall as L\n")
    assert config_kind(str(mm)) == "mmseg" and config_kind(str(lazy)) == "detectron2-lazy"


def test_mmseg_hooks_of_any_kind_are_kept_and_a_pool_hook_keeps_its_settings(tmp_path, capsys):
    pytest.importorskip("mmseg")
    from synthaug.integrations.mmseg.wrap_config import load

    base = tmp_path / "user.py"
    base.write_text(
        "custom_hooks = [dict(type='SyntheticPoolHook', interval=7, priority='LOW')]\n"
        "train_dataloader = dict(batch_size=2, dataset=dict(type='MyDataset'))\n"
    )
    out = tmp_path / "mix.py"
    assert cli(["wrap-config", str(base), "--store", "st", "--ratio", "0.25", "-o", str(out)]) == 0
    assert load(str(out)).custom_hooks == [{"type": "SyntheticPoolHook", "interval": 7, "priority": "LOW"}]
    assert not list(tmp_path.glob(".*draft*"))  # the checked draft is gone
    bad = tmp_path / "bad.py"
    bad.write_text("custom_imports = 'my.module'\ntrain_dataloader = dict(dataset=dict(type='X'))\n")
    assert cli(["wrap-config", str(bad), "--store", "st", "--ratio", "0.25", "-o", str(tmp_path / "b.py")]) == 2
    assert "custom_imports is 'my.module'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("loader", "inner", "drop_last"),
    [
        ("", None, None),  # no batch sampler: ours alone
        ("batch_sampler=None, ", None, None),  # an explicit None is replaced, not merged into (mmengine refuses that)
        ("batch_sampler=dict(type='AspectRatioBatchSampler'), drop_last=True, ", "AspectRatioBatchSampler", False),
    ],
)
def test_mmseg_batch_sampler_is_ours_holding_the_bases_own(tmp_path, loader, inner, drop_last):
    pytest.importorskip("mmseg")
    from synthaug.integrations.mmseg.wrap_config import load

    base = tmp_path / "user.py"
    base.write_text(f"train_dataloader = dict(batch_size=2, {loader}dataset=dict(type='MyDataset'))\n")
    out = tmp_path / "mix.py"
    assert cli(["wrap-config", str(base), "--store", "st", "--ratio", "0.3", "-o", str(out)]) == 0
    made = load(str(out)).train_dataloader
    assert made.batch_sampler.type == "SynthaugBatchSampler" and "_delete_" not in made.batch_sampler
    assert (made.batch_sampler.get("batch_sampler") or {}).get("type") == inner
    # torch refuses drop_last beside a batch sampler: the base's moves into ours
    assert made.get("drop_last") == drop_last and made.batch_sampler.get("drop_last") == (True if inner else None)


def test_a_mask2former_config_without_mmdet_names_the_extra(tmp_path, capsys, monkeypatch):
    """mmseg's Mask2Former configs import mmdet.models; without mmdet the drop-in says what to install, before
    writing anything (mmseg itself would build a head that silently lacks mmdet's Mask2Former)."""
    pytest.importorskip("mmseg")
    from synthaug.integrations.mmseg import wrap_config

    monkeypatch.setattr(wrap_config, "module_available", lambda name: name != "mmdet")
    out = tmp_path / "mix.py"
    config = "mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py"
    assert cli(["wrap-config", config, "--store", "st", "--ratio", "0.3", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "mmdet is not installed" in err and "synthaug[mmseg]" in err
    assert not out.exists()
