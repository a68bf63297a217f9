"""The learned annotator (DatasetDM): a small decoder on the UNet's features and cross-attention.

The decoder reads what the frozen diffusion UNet computes at one denoising step: the features
of each up block (before its upsampler) and the cross-attention of the prompt's class words,
and predicts a semantic mask plus, in its instance variant, a centre heatmap and per-pixel
offsets to the centre (Panoptic-DeepLab's instance encoding).

Why an FPN-style head and not DatasetDM's query decoder: with 20-100 labelled images, a
query decoder has to learn Hungarian-matched object queries from very few examples, which
converges slowly and trains for hours; a per-pixel FPN head trains in minutes on a CPU and
already has what the queries would add, since the class-word attention maps tell it which
prompted class is where. Centre-and-offset instances need no matching either. At generation
the decoder's foreground is shared out between the prompt's objects by their words'
attention over all steps, so each object's mask stays apart from the others (DecoderParams).

At generation the decoder's classes are restricted to background plus the prompt's classes,
as they are in training, where each labelled image's prompt names its classes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from synthaug.annotators.base import Annotation
from synthaug.annotators.cross_attention import aggregate_maps, object_maps
from synthaug.attention import AttentionStore, CaptureSpec
from synthaug.vocabulary import IGNORE_INDEX, ClassVocabulary, check_same_names

DECODER_FORMAT = "synthaug-decoder"
FORMAT_VERSION = 1
#: Logit given to classes a prompt does not name (finite, so that softmax and CE stay NaN-free).
EXCLUDED_LOGIT = -1e4
#: Where a pixel's class comes from (DecoderParams.classes).
CLASS_SOURCES = ("decoder", "attention")


@dataclass(frozen=True)
class DecoderConfig:
    """What a decoder reads and predicts; saved with its weights."""

    feature_factors: tuple[int, ...]
    feature_channels: tuple[int, ...]
    attention_factors: tuple[int, ...]
    class_names: tuple[str, ...]
    background_id: int
    timestep: int
    width: int = 64
    instances: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def capture(self) -> CaptureSpec:
        """Features and cross-attention at `timestep`'s step, and cross-attention over all steps."""
        return CaptureSpec(cross_factors=self.attention_factors, features=self.feature_factors, timestep=self.timestep)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecoderConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class PerceptionDecoder(nn.Module):
    """FPN over the UNet's up-block features; class attention joins at the finest level; per-pixel heads."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        # GroupNorm(1, C) first: UNet features differ in scale by orders of magnitude between blocks.
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(1, c), nn.Conv2d(c, w, 1)) for c in cfg.feature_channels
        )
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(w, w, 3, padding=1), _norm(w), nn.SiLU()) for _ in cfg.feature_channels
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(w + cfg.num_classes, w, 3, padding=1),
            _norm(w),
            nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1),
            _norm(w),
            nn.SiLU(),
        )
        self.semantic = nn.Conv2d(w, cfg.num_classes, 1)
        self.center = nn.Conv2d(w, 1, 1) if cfg.instances else None
        self.offset = nn.Conv2d(w, 2, 1) if cfg.instances else None

    def forward(self, features: Sequence[torch.Tensor], attention: torch.Tensor) -> dict[str, torch.Tensor]:
        """`features` in cfg.feature_factors order; `attention` (B, num_classes, H0, W0) at the finest size."""
        order = sorted(range(len(features)), key=lambda i: -self.cfg.feature_factors[i])  # coarse to fine
        x = None
        for i in order:
            lat = self.lateral[i](features[i].float())
            if x is not None:
                lat = lat + F.interpolate(x, size=lat.shape[-2:], mode="bilinear", align_corners=False)
            x = self.smooth[i](lat)
        assert x is not None
        if attention.shape[-2:] != x.shape[-2:]:
            attention = F.interpolate(attention, size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse(torch.cat([x, attention.float()], 1))
        out = {"semantic": self.semantic(x)}
        if self.center is not None and self.offset is not None:
            out["center"] = self.center(x)
            out["offset"] = self.offset(x)
        return out


def restrict_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Logits (B, C, H, W) with the classes not in `allowed` (B, C) bool pushed to EXCLUDED_LOGIT."""
    return logits.masked_fill(~allowed[:, :, None, None], EXCLUDED_LOGIT)


def allowed_classes(class_ids: Sequence[int], num_classes: int, background_id: int) -> torch.Tensor:
    """(num_classes,) bool: background and the prompted classes."""
    allowed = torch.zeros(num_classes, dtype=torch.bool)
    allowed[background_id] = True
    for c in class_ids:
        allowed[int(c)] = True
    return allowed


def class_attention(
    cross: dict[int, torch.Tensor],
    factors: Sequence[int],
    groups: Sequence[Sequence[int]],
    class_ids: Sequence[int],
    num_classes: int,
    size: tuple[int, int],
) -> torch.Tensor:
    """Per-class attention channels (num_classes, H, W) from one image's cross maps.

    `cross` is {factor: (1, h, w, L)}; each object's map is its words' attention, min-max
    normalised; a class channel is the maximum over that class's objects (zero if unprompted).
    """
    objects = object_maps(aggregate_maps(cross, factors, size)[0], groups)
    channels = objects.new_zeros((num_classes, *size))
    for k, c in enumerate(class_ids):
        channels[int(c)] = torch.maximum(channels[int(c)], objects[k])
    return channels


def model_signature(model) -> dict[str, Any]:
    """What identifies a diffusion model for a decoder: its card name, UNet config and a few weights.

    The weights are compared with a tolerance, so the same model in fp16 or on another device matches.
    """
    cfg = {k: v for k, v in dict(model.unet.config).items() if not k.startswith("_")}
    weights = model.unet.conv_in.weight.detach().float().flatten()[:32].cpu().tolist()
    return {
        "model_name": model.card.get("name", Path(model.path).name),
        "unet_config": json.loads(json.dumps(cfg, default=str)),
        "conv_in_weights": weights,
        "text_mask_policy": model.text_mask_policy,
    }


def check_model_signature(saved: dict[str, Any], model, where: str) -> None:
    """Raise ValueError if `model` is not the model the decoder at `where` was trained on."""
    ours = model_signature(model)
    problem = None
    if saved["unet_config"] != ours["unet_config"]:
        diff = sorted(
            k
            for k in set(saved["unet_config"]) | set(ours["unet_config"])
            if saved["unet_config"].get(k) != ours["unet_config"].get(k)
        )
        problem = f"its UNet differs in {diff[:5]}"
    elif not np.allclose(saved["conv_in_weights"], ours["conv_in_weights"], rtol=1e-2, atol=1e-3):
        problem = "its UNet has other weights (same architecture, another checkpoint)"
    if problem:
        raise ValueError(
            f"annotator {where} was trained on model {saved['model_name']!r}, but the model in use "
            f"({ours['model_name']!r} at {model.path}) is another: {problem}. Train an annotator for this model with "
            "`synthaug train-annotator --model PATH ...`, or generate with the model it was trained on."
        )


@dataclass
class DecoderFile:
    """A trained decoder as saved: config, weights, the model signature, and the training record."""

    cfg: DecoderConfig
    state: dict[str, torch.Tensor]
    signature: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)

    def build(self, device: str | torch.device = "cpu") -> PerceptionDecoder:
        net = PerceptionDecoder(self.cfg)
        net.load_state_dict(self.state)
        return net.to(device).eval()


def save_decoder(
    path: str | Path, decoder: PerceptionDecoder, signature: dict[str, Any], record: dict[str, Any]
) -> Path:
    """One safetensors file: the weights, with config, signature and record as JSON metadata (no pickle)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": DECODER_FORMAT,
        "version": str(FORMAT_VERSION),
        "config": json.dumps(decoder.cfg.to_dict()),
        "signature": json.dumps(signature),
        "record": json.dumps(record),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_decoder(path: str | Path) -> DecoderFile:
    """Read a decoder file; errors say what the file is and how to make a right one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"annotator file {path} does not exist: train one with `synthaug train-annotator --out {path} ...`"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"annotator file {path} is not a readable safetensors file ({err})") from None
    if meta.get("format") != DECODER_FORMAT:
        raise ValueError(f"{path} is not a synthaug decoder annotator (made by `synthaug train-annotator`)")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path} has decoder format {meta['version']}; this synthaug reads up to {FORMAT_VERSION}")
    return DecoderFile(
        DecoderConfig.from_dict(json.loads(meta["config"])),
        state,
        json.loads(meta["signature"]),
        json.loads(meta.get("record", "{}")),
    )


@dataclass(frozen=True)
class DecoderParams:
    """The trained decoder file and how to use it.

    `classes`: 'attention' (default) takes the foreground from the decoder and shares it out
    between the prompted objects by their words' attention (raised to `sharpness`), so the label
    follows the prompt also where the model drew a shape unlike its class; 'decoder' takes each
    pixel's class from the decoder (restricted to the prompt's classes), as DatasetDM does, and
    shares a class out only between that class's objects. On the toy model 'attention' scored
    higher (benchmarks/annotators_decoder.py). Each object's connected regions are its instances;
    `split_instances` further splits them between the instance head's centres (peaks above
    `center_threshold`), for prompts where one word names several objects ("two dogs"). It is
    off by default: on the toy world, where every object has its own words, it over-split (the
    instance count matched what was drawn in 0.60 of images against 1.00 without it). Pixels
    whose winning probability is below `ignore_below` become 255.
    """

    path: str = ""
    classes: str = "attention"
    sharpness: float = 4.0
    ignore_below: float = 0.0
    split_instances: bool = False
    center_threshold: float = 0.1

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("annotator.path is missing: give the file written by `synthaug train-annotator --out`")
        if self.classes not in CLASS_SOURCES:
            raise ValueError(f"annotator.classes={self.classes!r}: use one of {CLASS_SOURCES}")
        if not 0.0 <= self.ignore_below < 1.0:
            raise ValueError(f"annotator.ignore_below={self.ignore_below} must lie in [0, 1)")
        if not self.sharpness > 0:
            raise ValueError(f"annotator.sharpness={self.sharpness} must be > 0 (4 scored best on the toy model)")
        if not 0.0 < self.center_threshold < 1.0:
            raise ValueError(f"annotator.center_threshold={self.center_threshold} must lie in (0, 1)")


def predict(
    net: PerceptionDecoder, features: Sequence[torch.Tensor], attention: torch.Tensor, allowed: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Forward pass with the classes restricted: 'probs' (B, C, H0, W0) plus the instance heads' outputs."""
    out = net(features, attention)
    out["probs"] = restrict_logits(out["semantic"], allowed).softmax(1)
    return out


def decode_instances(
    semantic: torch.Tensor, center: torch.Tensor, offset: torch.Tensor, background_id: int, threshold: float
) -> torch.Tensor:
    """Instance ids (H0, W0), -1 = background or no centre found.

    A connected foreground region with one centre peak (above `threshold`) is one instance;
    with several, each of its pixels joins the peak nearest to where its offset points
    (Panoptic-DeepLab grouping). A region with no peak gets no id: stray fragments of the
    foreground must not split the objects they touch.
    """
    from scipy import ndimage

    H, W = semantic.shape
    fg = (semantic != background_id).cpu().numpy()
    regions, n = ndimage.label(fg, structure=np.ones((3, 3), bool))
    ids = torch.full((H, W), -1, dtype=torch.long)
    if n == 0:
        return ids
    heat = center[0]
    # Peaks closer than about an eighth of the side are one object (Panoptic-DeepLab's NMS window).
    k = max(3, (H // 8) | 1)
    peaks = ((heat == F.max_pool2d(heat[None, None], k, 1, k // 2)[0, 0]) & (heat > threshold)).cpu().numpy() & fg
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    next_id = 0
    for r in range(1, n + 1):
        region = torch.from_numpy(regions == r)
        py, px = np.nonzero(peaks & (regions == r))
        if len(py) <= 1:
            if len(py) == 1:
                ids[region] = next_id
                next_id += 1
            continue
        ty = yy[region].float() + offset[0][region] * H
        tx = xx[region].float() + offset[1][region] * W
        d = (ty[:, None] - torch.from_numpy(py)[None].float()) ** 2 + (
            tx[:, None] - torch.from_numpy(px)[None].float()
        ) ** 2
        ids[region] = next_id + d.argmin(1)
        next_id += len(py)
    return ids


def share_out(weight: torch.Tensor, sharpness: float) -> torch.Tensor:
    """Each object's share (K, H, W) of a pixel, from its attention (K, H, W) in [0, 1] raised to `sharpness`."""
    w = weight.clamp_min(1e-6) ** sharpness
    return w / w.sum(0, keepdim=True)


class DecoderAnnotator:
    """DatasetDM-style masks from a trained PerceptionDecoder; parameters in DecoderParams."""

    name = "decoder"

    def __init__(self, params: DecoderParams) -> None:
        self.params = params
        self.file = load_decoder(params.path)
        self.cfg = self.file.cfg
        self.net = self.file.build()
        self._instances: np.ndarray | None = None

    @property
    def capture(self) -> CaptureSpec:
        return self.cfg.capture

    def check_vocabulary(self, vocab: ClassVocabulary | Sequence[str]) -> None:
        """Raise ValueError, showing both lists, if the generation's classes are not the decoder's."""
        names = vocab.names if isinstance(vocab, ClassVocabulary) else tuple(vocab)
        check_same_names(
            self.cfg.class_names, names, "the generation's vocabulary", ours_label=f"annotator {self.params.path}"
        )

    def check_model(self, model) -> None:
        """Raise ValueError if `model` is not the one this decoder was trained on; move the decoder to its device."""
        check_model_signature(self.file.signature, model, self.params.path)
        self.net.to(model.device)

    def predict_store(
        self, store: AttentionStore, index: int, groups: Sequence[Sequence[int]], class_ids: Sequence[int]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The decoder's outputs for image `index` of a captured batch, and its per-object attention maps."""
        feats = store.feature_maps()
        missing = [f for f in self.cfg.feature_factors if f not in feats]
        if missing:
            raise ValueError(
                f"features at factors {missing} were not captured (captured: {sorted(feats)}); the model's UNet "
                f"does not match annotator {self.params.path}"
            )
        features = [feats[f][index : index + 1] for f in self.cfg.feature_factors]
        size = tuple(features[self.cfg.feature_factors.index(min(self.cfg.feature_factors))].shape[-2:])
        # The decoder reads its step's attention, as in training; objects are told apart by the
        # attention averaged over all steps, which is steadier than any one step's.
        step_cross = {f: m[index : index + 1] for f, m in store.cross_maps(at_step=True).items()}
        channels = class_attention(
            step_cross,
            self.cfg.attention_factors,
            groups,
            class_ids,
            self.cfg.num_classes,
            size,  # type: ignore[arg-type]
        )
        cross = {f: m[index : index + 1] for f, m in store.cross_maps().items()}
        objects = object_maps(aggregate_maps(cross, self.cfg.attention_factors, size)[0], groups)  # type: ignore[arg-type]
        allowed = allowed_classes(class_ids, self.cfg.num_classes, self.cfg.background_id)[None]
        dev = next(self.net.parameters()).device
        with torch.no_grad():
            out = predict(self.net, [f.to(dev) for f in features], channels[None].to(dev), allowed.to(dev))
        return {k: v[0].float().cpu() for k, v in out.items()}, objects.cpu()

    def maps(
        self,
        store: AttentionStore,
        index: int,
        groups: Sequence[Sequence[int]],
        size: tuple[int, int],
        class_ids: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """(K, H, W) per-object probabilities: the decoder's foreground (or, with classes='decoder', its
        class probability) shared out between the prompt's objects by their words' attention."""
        if class_ids is None:
            raise ValueError("the decoder annotator needs the class id of each object (class_ids)")
        out, objects = self.predict_store(store, index, groups, class_ids)
        probs = out["probs"]
        bg = self.cfg.background_id
        self._instances = None
        if self.params.split_instances and "center" in out:
            ids = decode_instances(probs.argmax(0), out["center"], out["offset"], bg, self.params.center_threshold)
            self._instances = F.interpolate(ids[None, None].float(), size=size, mode="nearest")[0, 0].long().numpy()
        if not len(class_ids):
            return probs.new_zeros((0, *size))
        if self.params.classes == "attention":
            # The decoder's foreground, shared out between all prompted objects by their words' attention.
            k_maps = (1.0 - probs[bg]) * share_out(objects, self.params.sharpness)
        else:
            k_maps = probs.new_zeros((len(class_ids), *probs.shape[-2:]))
            for c in dict.fromkeys(int(c) for c in class_ids):
                ks = [k for k, ck in enumerate(class_ids) if int(ck) == c]
                k_maps[ks] = probs[c] * share_out(objects[ks], self.params.sharpness)
        if tuple(k_maps.shape[-2:]) != tuple(size):
            k_maps = F.interpolate(k_maps[None], size=size, mode="bilinear", align_corners=False)[0]
        return k_maps.clamp(0, 1)

    def label(self, maps: torch.Tensor, class_ids: Sequence[int]) -> Annotation:
        """Each pixel goes to its most probable object if that beats background (1 - the objects' sum)."""
        arr = maps.detach().cpu().numpy()
        H, W = arr.shape[-2:]
        bg_id = self.cfg.background_id
        if arr.shape[0] == 0:
            return Annotation(
                np.full((H, W), bg_id, np.uint8), np.full((H, W), -1, np.int64), np.ones((H, W), np.float32)
            )
        background = np.clip(1.0 - arr.sum(0), 0.0, 1.0)
        best = arr.argmax(0)
        value = np.take_along_axis(arr, best[None], 0)[0]
        fg = value > background
        winner = np.where(fg, best, -1)
        sem = np.where(fg, np.asarray(class_ids, dtype=np.uint8)[best], bg_id).astype(np.uint8)
        confidence = np.maximum(value, background).astype(np.float32)
        if self.params.ignore_below > 0:
            sem[confidence < self.params.ignore_below] = IGNORE_INDEX
        # The instance head's ids of the image maps() was last called for (the generator calls
        # label right after maps and refine for each image); they split objects a word covers twice.
        ids, self._instances = self._instances, None
        if ids is not None and ids.shape != sem.shape:
            ids = None
        return Annotation(sem, winner, confidence, by_object=True, instance_ids=ids)
