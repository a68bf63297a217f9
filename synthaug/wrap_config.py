"""`synthaug wrap-config`: the drop-in for a user's own training config, so that nothing is typed by hand.

mmseg configs (Python) get a new file that inherits theirs (synthaug.integrations.mmseg.wrap_config).
detectron2 yacs configs (YAML) get a new YAML whose `_BASE_` is theirs plus the SYNTHAUG keys, and
LazyConfig files get the lines to put in them; both print the two lines their train script needs.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

D2_SCRIPT_LINES = (
    "In your train_net.py: `from synthaug.integrations.detectron2 import add_synthaug_config, with_synthaug`,\n"
    "call add_synthaug_config(cfg) before cfg.merge_from_file(...), and put @with_synthaug on your Trainer\n"
    "(tools/train_net.py in synthaug is detectron2's script with exactly these lines)."
)

MASK2FORMER_LINE = (
    "\nIn your own Mask2Former train_net.py, also call synthaug.integrations.detectron2.mask2former."
    "import_mask2former()\nbefore it imports mask2former (it stands in for compiled ops this machine lacks, each logged)."
)


def config_kind(config: str) -> str:
    """'mmseg', 'detectron2-yacs' or 'detectron2-lazy': a YAML file is yacs; a Python file that imports
    detectron2 (a LazyConfig does, an mmseg config does not) is a LazyConfig; anything else is mmseg."""
    if config.endswith((".yaml", ".yml")):
        return "detectron2-yacs"
    if "::" in config:
        return "mmseg"
    try:
        tree = ast.parse(Path(config).read_text(errors="replace"))
    except SyntaxError as err:
        raise ValueError(f"{config} is not valid Python ({err}); give a training config") from None
    for node in ast.walk(tree):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        if any(m == "detectron2" or m.startswith("detectron2.") for m in modules):
            return "detectron2-lazy"
    return "mmseg"


def check_output(config: str, out: Path) -> None:
    """Refuse to overwrite anything: the user's config above all (a config that inherits itself is lost)."""
    if out.exists() or out.is_symlink():
        same = "::" not in config and out.resolve() == Path(config).resolve()
        raise ValueError(
            f"-o {out}: "
            + ("that is the config to wrap itself" if same else "the file exists")
            + "; name a new file, so that nothing of yours is overwritten"
        )


#: INPUT.DATASET_MAPPER_NAME (Mask2Former's script) -> SYNTHAUG.TASK; the panoptic mappers have none
MAPPER_TASKS = {
    "mask_former_semantic": "sem_seg",
    "mask_former_instance": "instance",
    "coco_instance_lsj": "instance",
}
SEMANTIC_ARCHITECTURES = ("SemanticSegmentor",)


def yacs_merged(config: Path, depth: int = 0) -> dict:
    """A yacs YAML file merged over its `_BASE_` chain as fvcore merges it (a path relative to the file, `~`
    expanded, or a list of bases merged in order; the file's own keys win). Read as text, importing no
    framework; tags such as `!!python/object/apply:eval` read as None. {} for a file that is missing, not
    YAML or not a mapping (the trainer will say why when it loads it)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    try:
        data = yaml.load(config.read_text(), Loader=Loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    if not isinstance(data, dict) or depth > 16:
        return data if isinstance(data, dict) else {}
    bases = data.pop("_BASE_", None)
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases if isinstance(bases, list) else []:
        if isinstance(base, str):
            path = Path(os.path.expanduser(base))
            merge_into(merged, yacs_merged(path if path.is_absolute() else config.parent / path, depth + 1))
    merge_into(merged, data)
    return merged


def merge_into(base: dict, top: dict) -> None:
    """Merge mapping `top` into `base`, nested mappings key by key, `top`'s values winning."""
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_into(base[key], value)
        else:
            base[key] = value


def key_of(merged: dict, *keys: str) -> object:
    """A nested key of a merged yacs config (yacs_merged); None where it is not set."""
    node: object = merged
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def mapper_task(mapper: str) -> str | None:
    """The task Mask2Former's INPUT.DATASET_MAPPER_NAME `mapper` reads (None for a mapper it does not name);
    ValueError for a panoptic mapper, which synthetic samples cannot feed."""
    if "panoptic" in mapper:
        raise ValueError(
            f"INPUT.DATASET_MAPPER_NAME {mapper} reads panoptic labels (pan_seg_file_name, segments_info), which "
            f"synthetic samples do not have. Mix into a semantic or instance config ({', '.join(MAPPER_TASKS)})"
        )
    return MAPPER_TASKS.get(mapper)


def yacs_task(merged: dict, config: str) -> tuple[str, str]:
    """SYNTHAUG.TASK for a merged yacs config, and why: from Mask2Former's INPUT.DATASET_MAPPER_NAME (its
    default, mask_former_semantic, for a MaskFormer model that names none) or the model's META_ARCHITECTURE;
    'instance' otherwise. A panoptic mapper cannot read synthetic items: ValueError naming `config`."""
    arch = key_of(merged, "MODEL", "META_ARCHITECTURE")
    mapper = key_of(merged, "INPUT", "DATASET_MAPPER_NAME")
    if mapper is None and arch == "MaskFormer":
        mapper = "mask_former_semantic"
    if isinstance(mapper, str):
        try:
            task = mapper_task(mapper)
        except ValueError as err:
            raise ValueError(f"{config}: {err}") from None
        if task is not None:
            return task, f"INPUT.DATASET_MAPPER_NAME is {mapper}"
    if arch in SEMANTIC_ARCHITECTURES:
        return "sem_seg", f"MODEL.META_ARCHITECTURE is {arch}"
    return "instance", "instance masks (set sem_seg for a semantic segmentation model)"


def yacs_text(config: str, store: str, ratio: float, out: Path, seed: int, task: str, why: str) -> str:
    base = os.path.relpath(Path(config).resolve(), Path(out).resolve().parent)
    return (
        f"# Made by `synthaug wrap-config`: {config} plus synthetic samples from {store}.\n"
        f'_BASE_: "{base}"\n'
        "SYNTHAUG:\n"
        f"  STORE: {json.dumps(store)}\n"
        f'  TASK: "{task}"  # {why}\n'
        f"  RATIO: {ratio}\n"
        f"  SEED: {seed}\n"
        '  # CLASS_MAP: ["store_name=dataset_name"]  # for store classes whose names differ from the dataset\'s\n'
    )


def lazy_lines(store: str, ratio: float, seed: int) -> str:
    return (
        "In your LazyConfig, wrap the training loader (its mapper, batch size and workers stay yours):\n\n"
        "from synthaug.integrations.detectron2 import build_synthaug_train_loader\n"
        "dataloader.train = L(build_synthaug_train_loader)(\n"
        "    real=dataloader.train.dataset.names,\n"
        f"    store={store!r},\n"
        f"    ratio={ratio!r},\n"
        f"    seed={seed!r},\n"
        "    mapper=dataloader.train.mapper,\n"
        "    total_batch_size=dataloader.train.total_batch_size,\n"
        "    num_workers=dataloader.train.num_workers,\n"
        ")\n"
    )


def wrap_config(config: str, store: str, ratio: float, out: Path | None, seed: int = 0, interval: int = 50) -> str:
    """Write the mix config for `config` (mmseg, detectron2 yacs) or return the lines to add (LazyConfig)."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"--ratio {ratio}: the expected synthetic share must be in (0, 1), e.g. --ratio 0.3")
    if "::" not in config and not Path(config).is_file():
        raise FileNotFoundError(f"no config file {config}")
    kind = config_kind(config)
    if kind == "detectron2-lazy":
        return lazy_lines(store, ratio, seed)
    if out is None:
        raise ValueError(f"-o NEW_CONFIG is needed for a {kind} config: the file to write")
    out = Path(out)
    check_output(config, out)
    if kind == "detectron2-yacs":
        merged = yacs_merged(Path(config))  # read once: the task and the script both come from it
        task, why = yacs_task(merged, config)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yacs_text(config, store, ratio, out, seed, task, why))
        script = "train_net.py"
        if key_of(merged, "MODEL", "META_ARCHITECTURE") == "MaskFormer":
            script = "tools/mask2former_train_net.py"
        lines = D2_SCRIPT_LINES + (MASK2FORMER_LINE if script != "train_net.py" else "")
        return f"wrote {out}; train with: python {script} --config-file {out}\n{lines}"
    from synthaug.integrations.mmseg.wrap_config import write_mix_config

    write_mix_config(config, store, ratio, Path(out), seed, interval)
    return f"wrote {out}; train with mmseg's tools/train.py {out} (or: mim train mmseg {out})"
