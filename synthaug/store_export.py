"""Exports of a store: mmseg folders, COCO JSON (RLE), and WebDataset tar shards, so a store is never a lock-in.

Every export writes only under its output folder, never into the store it reads (links resolved): each
folder on the way must be a real folder (not a link planted by an earlier export), each file name is a
plain name, and a file that exists is replaced, never written through. Sample files are read only through the store's containment checks.
Images are copied by default; hard links (``link=True``) share the store's bytes, so editing such an
export would edit the store.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

from synthaug.imageio import mask_to_png
from synthaug.sample import Sample
from synthaug.store import SampleStore, StoreError
from synthaug.store_check import SAMPLE_FILE, is_plain_dir, lies_within

FORMATS = ("mmseg", "coco", "webdataset")
#: Record fields a WebDataset sample's .json carries (everything but the store's own file paths).
WDS_FIELDS = ("id", "height", "width", "prompt", "seed", "classes", "instances", "quality", "fingerprint", "created")


def refuse_store_folder(folder: Path, out: Path, store: Path) -> None:
    """A StoreError naming both if `folder` (one this tool writes into, under output folder `out`) is the store or
    lies inside it, symbolic links resolved: exports and galleries read a store, never write into it."""
    if lies_within(folder, store):
        where = "" if folder == out else f" ({folder} is in it)"
        raise StoreError(
            f"the output folder {out} would write into the store {store}{where}: export and show never write into "
            "the store they read; choose an output folder outside it"
        )


def out_dir(out: Path, *parts: str, store: Path) -> Path:
    """Folder out/<parts...>, created; refused (StoreError) if a folder on the way is a symbolic link (one planted
    in an old export could lead anywhere) or lies in the `store` read, so a tool writes only under its output folder."""
    refuse_store_folder(out, out, store)
    out.mkdir(parents=True, exist_ok=True)
    folder = out
    for part in parts:
        folder = folder / part
        refuse_store_folder(folder, out, store)
        if os.path.lexists(folder) and not is_plain_dir(folder):
            raise StoreError(
                f"{folder} is a symbolic link or not a folder: it could lead outside the output folder {out}; "
                "remove it first"
            )
        folder.mkdir(exist_ok=True)
    return folder


def out_file(folder: Path, name: str) -> Path:
    """File `name` of `folder`, where `name` must be a plain file name (no folder, no '..'); an existing file or
    link of that name is removed first, so a write never goes through a link."""
    if not SAMPLE_FILE.match(name):
        raise StoreError(f"{name!r} is not a plain file name: refusing to write it under {folder}")
    dst = folder / name
    if os.path.lexists(dst):
        dst.unlink()
    return dst


def export(
    path: str | Path, out: str | Path, fmt: str, split: str = "train", link: bool = False, shard_size: int = 1000
) -> int:
    """Write the store as mmseg folders (img_dir/ann_dir), COCO JSON (+ images) or WebDataset tar shards of
    `shard_size` samples; returns samples written.

    Images are copied (with `link`, hard-linked: an edit of the export then changes the store). Everything is
    written under `out`. Corrupt, unsafe and unreadable samples are skipped and reported, never exported.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: use one of {list(FORMATS)}")
    if not SAMPLE_FILE.match(split):
        raise ValueError(f"split={split!r}: use a plain folder name (letters, digits, '.', '_', '-')")
    store = SampleStore(path)
    out = Path(out)
    if fmt == "webdataset":
        written = _export_webdataset(store, out, split, shard_size)
    else:
        written = _export_folders(store, out, fmt, split, link)
    out_file(out_dir(out, store=store.root), "classes.json").write_text(
        json.dumps(store.vocabulary.to_dict(), indent=2) + "\n"
    )
    for sid, reason in {**store.stats.corrupt, **store.stats.denied}.items():
        print(f"skipped sample {sid}: {reason}", flush=True)
    return written


def _export_folders(store: SampleStore, out: Path, fmt: str, split: str, link: bool) -> int:
    """mmseg img_dir/ann_dir, or COCO images/ + annotations/instances_<split>.json."""
    img_dir = out_dir(out, "img_dir" if fmt == "mmseg" else "images", split, store=store.root)
    ann_dir = out_dir(out, "ann_dir", split, store=store.root) if fmt == "mmseg" else None
    coco = _coco_header(store)
    written = 0
    for rec in store.records:
        sample = store.try_read_record(rec)
        if sample is None:
            continue
        name = Path(rec["image"]).name
        _place(store.path_of(rec, "image"), out_file(img_dir, name), link)
        if ann_dir is not None:
            mask_to_png(sample.mask, store.vocabulary.palette).save(out_file(ann_dir, f"{rec['id']}.png"))
        else:
            _coco_add(coco, sample, rec, f"{split}/{name}")
        written += 1
    if ann_dir is None:
        out_file(out_dir(out, "annotations", store=store.root), f"instances_{split}.json").write_text(json.dumps(coco))
    return written


def wds_key(n: int, sample_id: str) -> str:
    """A WebDataset key: WebDataset splits a file name at its first dot, so the dots a segment name may hold
    become '_' (the running number keeps keys unique; the .json holds the real id)."""
    return f"{n:08d}_{sample_id.replace('.', '_')}"


def _export_webdataset(store: SampleStore, out: Path, split: str, shard_size: int) -> int:
    """Tar shards <split>-000000.tar, ...: per sample <key>.<png|jpg|webp> (the store's bytes), <key>.mask.png
    and <key>.json (the record without its paths): the format large jobs stream from shared or object storage."""
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size} must be >= 1")
    folder = out_dir(out, store=store.root)
    readable = [rec for rec in store.records if store.try_read_record(rec) is not None]
    for start in range(0, len(readable), shard_size):
        with tarfile.open(out_file(folder, f"{split}-{start // shard_size:06d}.tar"), "w") as tar:
            for n, rec in enumerate(readable[start : start + shard_size], start):
                key = wds_key(n, rec["id"])
                meta = {k: rec[k] for k in WDS_FIELDS if k in rec}
                _tar_add(tar, f"{key}.{rec['image'].rsplit('.', 1)[1]}", store.path_of(rec, "image"), rec)
                _tar_add(tar, f"{key}.mask.png", store.path_of(rec, "mask"), rec)
                _tar_add(tar, f"{key}.json", json.dumps(meta).encode(), rec)
    return len(readable)


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes | str, rec: dict[str, Any]) -> None:
    """One regular file in a shard (`data`, or the bytes of the file at that checked path), owned by nobody in
    particular, dated when its sample was made."""
    if isinstance(data, str):
        data = Path(data).read_bytes()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(rec.get("created", 0))
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _coco_header(store: SampleStore) -> dict[str, Any]:
    """An empty COCO dict with the store's foreground classes as categories."""
    vocab = store.vocabulary
    cats = [{"id": i, "name": n} for i, n in enumerate(vocab.names) if i in vocab.foreground_ids]
    return {"images": [], "annotations": [], "categories": cats}


def _coco_add(coco: dict[str, Any], sample: Sample, rec: dict[str, Any], file_name: str) -> None:
    """Append one image and its instances (RLE segmentation) to a COCO dict."""
    image_id = len(coco["images"]) + 1
    coco["images"].append(
        {
            "id": image_id,
            "file_name": file_name,
            "height": rec["height"],
            "width": rec["width"],
            "prompt": sample.prompt,
            "seed": sample.seed,
        }
    )
    for inst in sample.instances:
        coco["annotations"].append(
            {
                "id": len(coco["annotations"]) + 1,
                "image_id": image_id,
                "category_id": inst.class_id,
                "segmentation": inst.rle,
                "area": inst.area,
                "bbox": inst.bbox,
                "iscrowd": 0,
                **({"score": inst.score} if inst.score is not None else {}),
            }
        )


def _place(src: str, dst: Path, link: bool) -> None:
    """Copy `src` to `dst`; with `link`, hard-link it (falling back to a copy across file systems)."""
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copyfile(src, dst)
