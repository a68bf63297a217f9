"""`synthaug wrap-config`: the drop-in for a user's own training config, so that nothing is typed by hand.

mmseg configs (Python) get a new file that inherits theirs (synthaug.integrations.mmseg.wrap_config).
detectron2 yacs configs (YAML) get a new YAML whose `_BASE_` is theirs plus the SYNTHAUG keys, and
LazyConfig files get the lines to put in them; both print the two lines their train script needs.
"""

from __future__ import annotations

import os
from pathlib import Path

D2_SCRIPT_LINES = (
    "In your train_net.py: `from synthaug.integrations.detectron2 import add_synthaug_config, with_synthaug`,\n"
    "call add_synthaug_config(cfg) before cfg.merge_from_file(...), and put @with_synthaug on your Trainer\n"
    "(tools/train_net.py in synthaug is detectron2's script with exactly these lines)."
)


def config_kind(config: str) -> str:
    """'mmseg', 'detectron2-yacs' or 'detectron2-lazy', from the file's type and contents."""
    if config.endswith((".yaml", ".yml")):
        return "detectron2-yacs"
    if "::" not in config and "detectron2" in Path(config).read_text(errors="replace"):
        return "detectron2-lazy"
    return "mmseg"


def yacs_text(config: str, store: str, ratio: float, out: Path, seed: int) -> str:
    base = os.path.relpath(Path(config).resolve(), Path(out).resolve().parent)
    return (
        f"# Made by `synthaug wrap-config`: {config} plus synthetic samples from {store}.\n"
        f'_BASE_: "{base}"\n'
        "SYNTHAUG:\n"
        f'  STORE: "{store}"\n'
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
    if kind == "detectron2-yacs":
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(yacs_text(config, store, ratio, out, seed))
        return f"wrote {out}; train with: python train_net.py --config-file {out}\n{D2_SCRIPT_LINES}"
    from synthaug.integrations.mmseg.wrap_config import write_mix_config

    write_mix_config(config, store, ratio, Path(out), seed, interval)
    return f"wrote {out}; train with mmseg's tools/train.py {out} (or: mim train mmseg {out})"
