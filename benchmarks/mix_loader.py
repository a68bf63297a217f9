#!/usr/bin/env python3
"""DataLoader throughput over SyntheticMixDataset against the same loader over the real data alone.

    python benchmarks/mix_loader.py [--real 400] [--size 128] [--workers 2] [--rounds 5]

Real data: a toy dataset in mmseg's folder layout read from disk (PNG image + PNG mask); synthetic:
a store of toy renders of the same size. Every loader applies the same transform (random crop,
flip, to tensor), with persistent workers. Epochs alternate (real, mix, mix+augment, real, ...) in one process and ratios
are taken of the median throughputs, since this machine is shared and noisy.
Writes benchmarks/results/mix_loader.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from results_io import result_path, write_result
from torch.utils.data import DataLoader

from synthaug.mix import SyntheticMixDataset
from synthaug.sample import Sample
from synthaug.store import StoreWriter, create_store
from synthaug.toy.dataset import write_toy_dataset
from synthaug.toy.world import TOY_VOCABULARY, render_seed


class FolderDataset:
    """img_dir/ann_dir of one split, read as Samples (what a framework's loading transforms would do)."""

    def __init__(self, root: Path, split: str) -> None:
        self.images = sorted((root / "img_dir" / split).glob("*.png"))
        self.root, self.split = root, split

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Sample:
        path = self.images[i]
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
        with Image.open(self.root / "ann_dir" / self.split / path.name) as im:
            mask = np.asarray(im)
        return Sample(image, mask, seed=i)


class CropFlip:
    """The shared transform: random crop to 3/4 of the side, horizontal flip, to (C, H, W) float + long mask."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, s: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = s.mask.shape
        ch, cw = 3 * h // 4, 3 * w // 4
        y, x = self.rng.integers(0, h - ch + 1), self.rng.integers(0, w - cw + 1)
        img, mask = s.image[y : y + ch, x : x + cw], s.mask[y : y + ch, x : x + cw]
        if self.rng.random() < 0.5:
            img, mask = img[:, ::-1], mask[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255, torch.from_numpy(
            np.ascontiguousarray(mask)
        ).long()


class Transformed:
    def __init__(self, ds, transform) -> None:
        self.ds, self.transform = ds, transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        return self.transform(self.ds[i])


def make_loader(ds, workers: int, batch: int) -> DataLoader:
    """Persistent workers, so that worker start-up does not favour the longer (mixed) epoch."""
    return DataLoader(
        ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0
    )


def throughput(loader: DataLoader) -> float:
    """Items per second over one epoch of `loader`."""
    t0 = time.perf_counter()
    n = sum(x[0].shape[0] for x in loader)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", type=int, default=400)
    ap.add_argument("--synthetic", type=int, default=400)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_toy_dataset(root / "real", {"train": args.real}, size=args.size)
        store = create_store(root / "store", TOY_VOCABULARY)
        with StoreWriter(store, "gen0", fsync=False) as w:
            for s in range(args.synthetic):
                w.add(render_seed(50_000 + s, args.size).to_sample())
        real = FolderDataset(root / "real", "train")
        loaders = {
            "real only": Transformed(real, CropFlip()),
            "mix, no augment": Transformed(
                SyntheticMixDataset(real, store, ratio=args.ratio, augment=None), CropFlip()
            ),
            "mix + splice/blur": Transformed(SyntheticMixDataset(real, store, ratio=args.ratio), CropFlip()),
        }
        runs: dict[str, list[float]] = {k: [] for k in loaders}
        built = {name: make_loader(ds, args.workers, args.batch) for name, ds in loaders.items()}
        for loader in built.values():
            throughput(loader)  # start the workers and warm the page cache
        for _ in range(args.rounds):
            for name, loader in built.items():
                runs[name].append(throughput(loader))
    med = {k: statistics.median(v) for k, v in runs.items()}
    base = med["real only"]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "args": vars(args),
        "items_per_s": {k: round(v, 1) for k, v in med.items()},
        "ratio_to_real_only": {k: round(v / base, 3) for k, v in med.items()},
    }
    print(json.dumps(result, indent=2))
    write_result(
        result_path("mix_loader", real=args.real, synthetic=args.synthetic, size=args.size, ratio=args.ratio,
                    workers=args.workers, batch=args.batch),
        result,
    )  # fmt: skip


if __name__ == "__main__":
    main()
