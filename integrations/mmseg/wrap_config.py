"""`synthaug wrap-config` for mmseg: a new config that inherits the user's and adds only the mix.

Appending the drop-in lines to a config replaces whatever that config set for the same names
(its `train_dataloader` settings, its `custom_imports`, its `custom_hooks`). A config that names
the user's as `_base_` inherits everything, so only the keys below are written, and the lists that
mmengine replaces rather than merges (imports, hooks) are written whole: the base's entries plus ours
(our import first: on mmcv-lite it supplies the mmcv ops that `mmdet.models` imports at start).
"""

from __future__ import annotations

import importlib.util
import os
import pprint
from pathlib import Path
from typing import Any

from mmengine.config import Config

OUR_IMPORT = "synthaug.integrations.mmseg"
MIX_TYPE = "SyntheticMixSegDataset"
HOOK_TYPE = "SyntheticPoolHook"
SAMPLER_TYPE = "SynthaugBatchSampler"


def module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def plain(value: Any) -> Any:
    """ConfigDicts and tuples as plain dicts and lists, so that repr() writes valid config Python."""
    if isinstance(value, dict):  # `_scope_` is what mmengine adds to entries of a `scope::` base
        return {str(k): plain(v) for k, v in value.items() if k != "_scope_"}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def base_reference(config: str, out: Path) -> str:
    """How the new config names its base: `scope::path` as given, else a path relative to the new file."""
    if "::" in config:
        return config
    return os.path.relpath(Path(config).resolve(), out.resolve().parent)


def load(config: str) -> Config:
    """Config.fromfile, also for `mmseg::path` names (resolved in the installed package, as `_base_` does)."""
    if "::" in config:
        config = Config._get_cfg_path(config, os.path.join(os.getcwd(), "config.py"))[0]
    return Config.fromfile(config, import_custom_modules=False)


def mix_config_text(config: str, store: str, ratio: float, out: Path, seed: int = 0, interval: int = 50) -> str:
    """The text of a config that trains `config` on its real data mixed with `store` at `ratio`."""
    cfg = load(config)
    dataset = (cfg.get("train_dataloader") or {}).get("dataset")
    if not dataset:
        raise ValueError(f"{config} has no train_dataloader.dataset to mix into: give a training config")
    if dataset.get("type") == MIX_TYPE:
        raise ValueError(f"{config} already mixes synthetic samples (train_dataloader.dataset.type={MIX_TYPE})")
    imports_cfg = cfg.get("custom_imports") or {}
    if not isinstance(imports_cfg, dict):
        raise ValueError(
            f"{config}: custom_imports is {imports_cfg!r:.80}; mmengine reads dict(imports=[...]), so fix it first"
        )
    imports = imports_cfg.get("imports", [])
    imports = [imports] if isinstance(imports, str) else list(imports)
    # Ours first: on mmcv-lite it supplies the mmcv.ops that `mmdet.models` (Mask2Former) imports at start.
    imports = [OUR_IMPORT] + [i for i in imports if i != OUR_IMPORT]
    for name in imports:
        if name.split(".")[0] == "mmdet" and not module_available("mmdet"):
            raise ValueError(
                f"{config} imports {name} (mmseg's Mask2Former and MaskFormer heads are mmdet's), but mmdet is not "
                "installed: pip install 'synthaug[mmseg]' (it includes mmdet 3.3)"
            )
    hooks = [plain(h) for h in cfg.get("custom_hooks") or []]
    if not any(isinstance(h, dict) and h.get("type") == HOOK_TYPE for h in hooks):  # keep the user's own settings
        hooks.append({"type": HOOK_TYPE, "interval": interval})
    allow_failed = bool(imports_cfg.get("allow_failed_imports", False))
    sampler_lines = batch_sampler_lines(cfg.train_dataloader)
    return (
        f"# Made by `synthaug wrap-config`: {config}, trained on its own data mixed with synthetic samples\n"
        f"# from {store}. Everything else (loader settings, schedule, model) is inherited from the base.\n"
        f"_base_ = [{base_reference(config, out)!r}]\n\n"
        f"custom_imports = dict(imports={imports!r}, allow_failed_imports={allow_failed})\n"
        "train_dataloader = dict(\n"
        "    dataset=dict(\n"
        "        _delete_=True,\n"
        f"        type={MIX_TYPE!r},\n"
        "        real={{_base_.train_dataloader.dataset}},  # the base's training set, unchanged\n"
        f"        store={store!r},\n"
        f"        ratio={ratio!r},\n"
        f"        seed={seed!r},\n"
        "    ),\n" + sampler_lines + ")\n"
        f"custom_hooks = {pprint.pformat(hooks, indent=4, width=100, sort_dicts=False)}\n"
    )


def batch_sampler_lines(loader: Any) -> str:
    """The loader's batch_sampler: ours (the planned, checkpointed draw), holding the base's own if it has one.
    A base `drop_last=True` moves into it, since torch refuses drop_last beside a batch sampler."""
    args = [f"type={SAMPLER_TYPE!r}"]
    if "batch_sampler" in loader:  # replace the base's entry (None included) rather than merge into it
        args.insert(0, "_delete_=True")
    if loader.get("batch_sampler"):
        args.append(f"batch_sampler={plain(loader['batch_sampler'])!r}")
    lines = f"    batch_sampler=dict({', '.join(args)}),  # the planned, checkpointed draw\n"
    if loader.get("drop_last"):
        lines = (
            lines.replace("),  #", ", drop_last=True),  #") + "    drop_last=False,  # moved into the batch sampler\n"
        )
    return lines


def write_mix_config(config: str, store: str, ratio: float, out: Path, seed: int = 0, interval: int = 50) -> Path:
    """Write the mix config to `out` and check that it parses and keeps the base's loader settings (the ratio is
    checked by synthaug.wrap_config.wrap_config, the one entry point)."""
    out = Path(out)
    if out.suffix != ".py":
        raise ValueError(f"-o {out}: an mmseg config is a Python file; name it NAME.py")
    text = mix_config_text(config, store, ratio, out, seed, interval)
    out.parent.mkdir(parents=True, exist_ok=True)
    draft = out.with_name(f".{out.stem}.synthaug-draft.py")  # checked before it takes the name asked for
    draft.write_text(text)
    try:
        made, base = load(str(draft)).train_dataloader, load(config).train_dataloader
        ours = ("dataset", "batch_sampler", "drop_last")
        changed = [k for k in base if k not in ours and plain(base[k]) != plain(made.get(k))]
        if changed or made.dataset.get("type") != MIX_TYPE or made.batch_sampler.get("type") != SAMPLER_TYPE:
            raise RuntimeError(f"{out} would not keep {config}'s train_dataloader {changed}; please report this")
        os.link(draft, out)  # fails, rather than overwrite, if the name was taken meanwhile
    finally:
        draft.unlink(missing_ok=True)
    return out
