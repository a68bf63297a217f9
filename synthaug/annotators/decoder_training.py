"""Train the learned decoder annotator on a few labelled real images, with the diffusion model frozen.

    synthaug train-annotator --images DIR --masks DIR --out decoder.safetensors [--model M]

Each labelled image is noised to the decoder's timestep and passed once through the UNet with
a prompt naming its classes (``synthaug.features``); the features and class attention are
computed once (a few noise draws and a horizontal flip per image), then only the small
decoder trains. A held-out share of the images scores mIoU as training goes, and the
weights of the best held-out score are what is saved.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from synthaug.annotators.decoder_file import model_signature, save_decoder
from synthaug.annotators.decoder_net import (
    DecoderConfig,
    PerceptionDecoder,
    allowed_classes,
    class_attention,
    predict,
)
from synthaug.annotators.instances import components
from synthaug.attention import CaptureSpec, check_capture, default_cross_factors
from synthaug.features import DEFAULT_REAL_TEMPLATE, capture_real, real_prompt
from synthaug.imageio import read_image, read_mask
from synthaug.metrics import IoUAccumulator
from synthaug.prompts import PromptSpec
from synthaug.vocabulary import IGNORE_INDEX, ClassVocabulary

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass
class LabelledImages:
    """Images (N, H, W, 3) uint8, masks (N, H, W) uint8 (255 = ignore), optional instance ids (N, H, W), names."""

    images: np.ndarray
    masks: np.ndarray
    instances: np.ndarray | None
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index: Sequence[int]) -> LabelledImages:
        idx = list(index)
        inst = None if self.instances is None else self.instances[idx]
        return LabelledImages(self.images[idx], self.masks[idx], inst, [self.names[i] for i in idx])


def _by_stem(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes}


def _resize(arr: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    from PIL import Image

    if arr.shape[0] == arr.shape[1] == size:
        return arr
    img = Image.fromarray(arr)
    return np.asarray(img.resize((size, size), Image.NEAREST if nearest else Image.BILINEAR))


def read_labelled_folder(
    images_dir: str | Path,
    masks_dir: str | Path,
    size: int,
    instances_dir: str | Path | None = None,
    limit: int | None = None,
) -> LabelledImages:
    """Pair images and masks by file stem (mmseg's img_dir/ann_dir layout), resized to `size` x `size`.

    Mask pixels are class ids (palette or greyscale PNG). Instance PNGs, if given, hold one id per
    object (0 = none); without them, instances are the connected components of each class.
    """
    imgs = _by_stem(Path(images_dir), IMAGE_SUFFIXES)
    masks = _by_stem(Path(masks_dir), (".png",))
    names = sorted(set(imgs) & set(masks))
    if not names:
        raise ValueError(
            f"no image in {images_dir} has a mask of the same name in {masks_dir} "
            f"({len(imgs)} images, {len(masks)} mask PNGs): pair them by file stem, e.g. a.jpg with a.png"
        )
    if limit is not None:
        names = names[:limit]
    insts = _by_stem(Path(instances_dir), (".png",)) if instances_dir is not None else None
    if insts is not None and (missing := [n for n in names if n not in insts]):
        raise ValueError(f"{len(missing)} images have no instance PNG in {instances_dir}, e.g. {missing[0]!r}")
    images = np.stack([_resize(read_image(imgs[n]), size, nearest=False) for n in names])
    mask_arr = np.stack([_resize(read_mask(masks[n]), size, nearest=True) for n in names])
    inst_arr = None
    if insts is not None:
        from PIL import Image

        inst_arr = np.stack(
            [_resize(np.asarray(Image.open(insts[n])).astype(np.int32), size, nearest=True) for n in names]
        )
    return LabelledImages(images, mask_arr, inst_arr, names)


def instance_ids(mask: np.ndarray, instances: np.ndarray | None, background_id: int) -> np.ndarray:
    """(H, W) int instance ids (0 = none): the given ones, or connected components of each class."""
    if instances is not None:
        return np.where((mask != background_id) & (mask != IGNORE_INDEX), instances, 0)
    out = np.zeros(mask.shape, np.int32)
    comps = [comp for c in np.unique(mask) if c not in (background_id, IGNORE_INDEX) for comp in components(mask == c)]
    for n, comp in enumerate(comps, 1):
        out[comp] = n
    return out


def instance_targets(ids: np.ndarray, size: int, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre heatmap (1, s, s), offsets to the centre as a share of the side (2, s, s), and where they count."""
    small = _resize(ids.astype(np.int32), size, nearest=True) if ids.shape[0] != size else ids
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    heat = np.zeros((size, size), np.float32)
    offset = np.zeros((2, size, size), np.float32)
    valid = np.zeros((1, size, size), np.float32)
    for i in np.unique(small):
        if i == 0:
            continue
        region = small == i
        cy, cx = yy[region].mean(), xx[region].mean()
        heat = np.maximum(heat, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))
        offset[0][region] = (cy - yy[region]) / size
        offset[1][region] = (cx - xx[region]) / size
        valid[0][region] = 1.0
    return heat[None], offset, valid


@dataclass
class FeatureSet:
    """Captured inputs and targets of every (image, noise draw, flip) view, ready for training."""

    features: list[torch.Tensor]
    attention: torch.Tensor
    allowed: torch.Tensor
    masks: torch.Tensor
    heat: torch.Tensor
    offset: torch.Tensor
    valid: torch.Tensor

    def __len__(self) -> int:
        return self.masks.shape[0]

    def batch(self, idx: torch.Tensor) -> dict[str, Any]:
        return {
            "features": [f[idx] for f in self.features],
            **{k: getattr(self, k)[idx] for k in ("attention", "allowed", "masks", "heat", "offset", "valid")},
        }


def probe_features(model, size: int) -> dict[int, int]:
    """{factor: channels} of the UNet's up-block features, found by one capture of a blank image."""
    latent = size // model.vae_factor
    factors = tuple(2**i for i in range(int(math.log2(latent)) + 1))
    spec = CaptureSpec(cross_factors=(), features=factors, timestep=0)
    store = capture_real(model, np.zeros((1, size, size, 3), np.uint8), [""], spec, [0])
    return {f: t.shape[1] for f, t in sorted(store.feature_maps().items())}


def extract_features(
    model,
    data: LabelledImages,
    cfg: DecoderConfig,
    vocab: ClassVocabulary,
    template: str = DEFAULT_REAL_TEMPLATE,
    draws: int = 1,
    flip: bool = False,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "features",
) -> FeatureSet:
    """Run the frozen UNet once per view (image x noise draw x flip) and keep what the decoder reads."""
    views = [(i, d, fl) for i in range(len(data)) for d in range(draws) for fl in ((False, True) if flip else (False,))]
    finest = min(cfg.feature_factors)
    feats: list[list[torch.Tensor]] = [[] for _ in cfg.feature_factors]
    att, allowed, masks, heat, offset, valid = [], [], [], [], [], []
    for b in tqdm(range(0, len(views), batch_size), desc=desc, unit="batch", disable=not progress):
        chunk = views[b : b + batch_size]
        images = np.stack([data.images[i][:, ::-1] if fl else data.images[i] for i, _, fl in chunk])
        mks = np.stack([data.masks[i][:, ::-1] if fl else data.masks[i] for i, _, fl in chunk])
        specs = [real_prompt(vocab, [int(c) for c in np.unique(m) if c != IGNORE_INDEX], template) for m in mks]
        seeds = [seed * 1_000_003 + i * 97 + d for i, d, _ in chunk]
        captured = capture_real(model, images, [s.text for s in specs], cfg.capture, seeds)
        fm = captured.feature_maps()
        for j, f in enumerate(cfg.feature_factors):
            feats[j].append(fm[f].cpu().to(torch.float16))
        size = tuple(fm[finest].shape[-2:])
        cross = captured.cross_maps(at_step=True)
        for k, (spec, (i, _, fl)) in enumerate(zip(specs, chunk)):
            inst = None if data.instances is None else data.instances[i]
            targets = view_targets(
                model, cfg, spec, {f: m[k : k + 1] for f, m in cross.items()}, mks[k], inst, fl, size
            )
            for acc, value in zip((att, allowed, masks, heat, offset, valid), targets):
                acc.append(value)
    return FeatureSet(
        [torch.cat(f) for f in feats],
        torch.stack(att),
        torch.stack(allowed),
        torch.stack(masks),
        torch.stack(heat),
        torch.stack(offset),
        torch.stack(valid),
    )


def view_targets(
    model,
    cfg: DecoderConfig,
    spec: PromptSpec,
    cross: dict[int, torch.Tensor],
    mask: np.ndarray,
    inst: np.ndarray | None,
    flipped: bool,
    size: tuple[int, int],
) -> tuple[torch.Tensor, ...]:
    """One view's decoder inputs and targets: class attention, allowed classes, mask, centre heat, offsets, valid."""
    ids = [t.class_id for t in spec.targets]
    groups = model.token_groups(spec)
    if groups:
        ch = class_attention(cross, cfg.attention_factors, groups, ids, cfg.num_classes, size)
    else:
        ch = torch.zeros((cfg.num_classes, *size))
    if inst is not None and flipped:
        inst = inst[:, ::-1]
    h, o, v = instance_targets(instance_ids(mask, inst, cfg.background_id), size[0], sigma=max(1.0, size[0] / 24))
    return (
        ch.cpu(),
        allowed_classes(ids, cfg.num_classes, cfg.background_id),
        torch.from_numpy(mask.astype(np.int64)),
        torch.from_numpy(h),
        torch.from_numpy(o),
        torch.from_numpy(v),
    )


def decoder_loss(out: dict[str, torch.Tensor], batch: dict[str, Any], loss_size: int) -> torch.Tensor:
    """Cross-entropy on the restricted classes (255 ignored) + centre MSE + offset L1 on object pixels."""
    from synthaug.annotators.decoder_net import restrict_logits

    logits = restrict_logits(out["semantic"], batch["allowed"])
    masks = batch["masks"]
    if masks.shape[-1] != loss_size:
        masks = F.interpolate(masks[:, None].float(), size=(loss_size, loss_size), mode="nearest")[:, 0].long()
    if logits.shape[-1] != loss_size:
        logits = F.interpolate(logits, size=(loss_size, loss_size), mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
    if "center" in out:
        loss = loss + 10.0 * F.mse_loss(out["center"], batch["heat"])
        v = batch["valid"]
        loss = loss + (v * (out["offset"] - batch["offset"]).abs()).sum() / v.sum().clamp_min(1.0) * 2.0
    return loss


def miou(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """Dataset mIoU of (N, H, W) predictions against truth (255 ignored), over classes that occur."""
    acc = IoUAccumulator(num_classes)
    for p, t in zip(pred, truth):
        acc.add(p, t)
    return acc.miou()


@torch.no_grad()
def predict_semantic(net: PerceptionDecoder, data: FeatureSet, batch_size: int = 32) -> np.ndarray:
    """Argmax masks (N, H, W) of a feature set, at its masks' size."""
    net.eval()
    out = []
    size = tuple(data.masks.shape[-2:])
    for b in range(0, len(data), batch_size):
        batch = data.batch(torch.arange(b, min(b + batch_size, len(data))))
        probs = predict(net, batch["features"], batch["attention"], batch["allowed"])["probs"]
        if tuple(probs.shape[-2:]) != size:
            probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
        out.append(probs.argmax(1).numpy().astype(np.uint8))
    return np.concatenate(out)


@dataclass
class TrainOptions:
    """How to train: decoder width and instance head, what to read, how long, and the held-out share."""

    timestep: int = 50
    attention_factors: tuple[int, ...] | None = None  # None: the model's finest, of (1, 2)
    width: int = 64
    instances: bool = True
    iterations: int = 600
    batch_size: int = 8
    lr: float = 2e-3
    draws: int = 2
    flip: bool = True
    val_fraction: float = 0.2
    eval_every: int = 50
    template: str = DEFAULT_REAL_TEMPLATE
    seed: int = 0

    def check(self, n_images: int) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction} must lie in [0, 1)")
        n_val = round(n_images * self.val_fraction)
        if n_images - n_val < 1:
            raise ValueError(f"{n_images} labelled images leave none to train on: give more, or lower --val-fraction")
        for key in ("iterations", "batch_size", "draws", "eval_every", "width"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 1")


@dataclass
class TrainResult:
    """Where the decoder was saved (None if not), the trained network, and its training record."""

    path: Path | None
    net: PerceptionDecoder
    record: dict[str, Any]


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded shuffle into (train, held-out) index lists."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = round(n * val_fraction)
    return sorted(order[n_val:]), sorted(order[:n_val])


def check_training_data(data: LabelledImages, vocab: ClassVocabulary, opt: TrainOptions) -> None:
    """Fail before any model work if the options, the vocabulary or the masks cannot train a decoder."""
    opt.check(len(data))
    if vocab.background is None:
        raise ValueError("the decoder needs a background class: give the vocabulary a 'background' name")
    bad = sorted({int(c) for c in np.unique(data.masks)} - set(range(len(vocab))) - {IGNORE_INDEX})
    if bad:
        raise ValueError(
            f"masks hold class ids {bad} that the vocabulary ({len(vocab)} classes: {list(vocab.names)}) lacks"
        )


def decoder_config(model, vocab: ClassVocabulary, opt: TrainOptions, size: int) -> DecoderConfig:
    """The decoder's shape for `model` at image `size`: the UNet's feature channels and attention factors."""
    channels = probe_features(model, size)
    cfg = DecoderConfig(
        feature_factors=tuple(channels),
        feature_channels=tuple(channels.values()),
        attention_factors=tuple(opt.attention_factors or default_cross_factors(model.unet)),
        class_names=vocab.names,
        background_id=vocab.id_of(vocab.background),
        timestep=opt.timestep,
        width=opt.width,
        instances=opt.instances,
    )
    check_capture(cfg.capture, model.unet)
    return cfg


def fit_decoder(
    net: PerceptionDecoder, train: FeatureSet, val: FeatureSet | None, opt: TrainOptions, loss_size: int, progress: bool
) -> tuple[float, int, list[dict[str, Any]]]:
    """Train `net` in place; with held-out features, keep the weights of the best held-out mIoU.
    Returns (best held-out mIoU or -1, its iteration, the evaluation history)."""
    optim = torch.optim.AdamW(net.parameters(), lr=opt.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=opt.lr, total_steps=opt.iterations, pct_start=0.1)
    gen = torch.Generator().manual_seed(opt.seed)
    best = (-1.0, opt.iterations, {k: v.clone() for k, v in net.state_dict().items()})
    history = []
    bar = tqdm(range(1, opt.iterations + 1), desc="train decoder", unit="it", disable=not progress)
    for it in bar:
        net.train()
        batch = train.batch(torch.randint(len(train), (min(opt.batch_size, len(train)),), generator=gen))
        loss = decoder_loss(net(batch["features"], batch["attention"]), batch, loss_size)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        if val is not None and (it % opt.eval_every == 0 or it == opt.iterations):
            score = miou(predict_semantic(net, val), val.masks.numpy(), net.cfg.num_classes)
            history.append({"iteration": it, "loss": round(loss.item(), 5), "val_miou": round(score, 4)})
            if score > best[0]:
                best = (score, it, {k: v.clone() for k, v in net.state_dict().items()})
            bar.set_postfix(loss=f"{loss.item():.3f}", val_miou=f"{score:.3f}", best=f"{best[0]:.3f}")
        else:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if val is not None:
        net.load_state_dict(best[2])
    net.eval()
    return best[0], best[1], history


def train_decoder(
    model,
    data: LabelledImages,
    vocab: ClassVocabulary,
    options: TrainOptions | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    log=print,
) -> TrainResult:
    """Train a PerceptionDecoder on `data` with `model` frozen; save it to `out` if given."""
    opt = options or TrainOptions()
    check_training_data(data, vocab, opt)
    torch.manual_seed(opt.seed)
    t0 = time.perf_counter()
    size = data.images.shape[1]
    cfg = decoder_config(model, vocab, opt, size)
    train_idx, val_idx = split_indices(len(data), opt.val_fraction, opt.seed)
    args = (cfg, vocab, opt.template)
    train = extract_features(
        model, data.subset(train_idx), *args, opt.draws, opt.flip, opt.seed, progress=progress, desc="features (train)"
    )
    val = None
    if val_idx:
        val = extract_features(
            model, data.subset(val_idx), *args, 1, False, opt.seed + 1, progress=progress, desc="features (held-out)"
        )
    t_features = time.perf_counter() - t0
    net = PerceptionDecoder(cfg)
    score, best_it, history = fit_decoder(net, train, val, opt, min(size, 4 * train.attention.shape[-1]), progress)
    record = {
        "labelled_images": len(data),
        "train_images": len(train_idx),
        "heldout_images": len(val_idx),
        "heldout_miou": round(score, 4) if val is not None else None,
        "best_iteration": best_it,
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(opt).items()},
        "feature_seconds": round(t_features, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "history": history,
    }
    if val is not None:
        log(f"[train-annotator] held-out mIoU {score:.3f} on {len(val_idx)} images (best at iteration {best_it})")
    path = save_decoder(out, net, model_signature(model), record) if out is not None else None
    return TrainResult(path, net, record)
