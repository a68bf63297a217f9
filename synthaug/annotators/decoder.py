"""The learned annotator (DatasetDM): a small decoder on the UNet's features and cross-attention.

The decoder (synthaug.annotators.decoder_net; its file format in decoder_file) reads what the
frozen diffusion UNet computes at one timestep: the features of each up block (before its
upsampler) and the cross-attention of the prompt's class words, and predicts a semantic mask
plus, in its instance variant, a centre heatmap and per-pixel offsets to the centre
(Panoptic-DeepLab's instance encoding). At generation
the decoder's foreground is shared out between the prompt's objects by their words'
attention over all steps, so each object's mask stays apart from the others (DecoderParams).

At generation the decoder's classes are restricted to background plus the prompt's classes,
as they are in training, where each labelled image's prompt names its classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synthaug.annotators.base import ObjectMaps
from synthaug.annotators.cross_attention import image_object_maps
from synthaug.annotators.decoder_file import check_model_signature, load_decoder
from synthaug.annotators.decoder_net import allowed_classes, class_attention, decode_instances, predict
from synthaug.annotators.labels import LabelRule
from synthaug.attention import CapturedAttention, CaptureSpec
from synthaug.vocabulary import ClassVocabulary, check_same_names

#: Where a pixel's class comes from (DecoderParams.classes).
CLASS_SOURCES = ("decoder", "attention")


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

    by_object = True

    @property
    def rule(self) -> LabelRule:
        """A pixel goes to its most probable object if that beats background (1 - the objects' sum)."""
        return LabelRule("residual", ignore_below=self.params.ignore_below)

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
        self, captured: CapturedAttention, index: int, groups: Sequence[Sequence[int]], class_ids: Sequence[int]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The decoder's outputs for image `index` of a captured batch, and its per-object attention maps."""
        feats = captured.feature_maps()
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
        step_cross = {f: m[index : index + 1] for f, m in captured.cross_maps(at_step=True).items()}
        channels = class_attention(
            step_cross,
            self.cfg.attention_factors,
            groups,
            class_ids,
            self.cfg.num_classes,
            size,  # type: ignore[arg-type]
        )
        objects = image_object_maps(captured, index, self.cfg.attention_factors, groups, size)  # type: ignore[arg-type]
        allowed = allowed_classes(class_ids, self.cfg.num_classes, self.cfg.background_id)[None]
        dev = next(self.net.parameters()).device
        with torch.no_grad():
            out = predict(self.net, [f.to(dev) for f in features], channels[None].to(dev), allowed.to(dev))
        return {k: v[0].float().cpu() for k, v in out.items()}, objects.cpu()

    def maps(
        self,
        captured: CapturedAttention,
        index: int,
        groups: Sequence[Sequence[int]],
        size: tuple[int, int],
        class_ids: Sequence[int] | None = None,
    ) -> ObjectMaps:
        """(K, H, W) per-object probabilities: the decoder's foreground (or, with classes='decoder', its
        class probability) shared out between the prompt's objects by their words' attention; with
        split_instances, the instance head's ids too."""
        if class_ids is None:
            raise ValueError("the decoder annotator needs the class id of each object (class_ids)")
        out, objects = self.predict_store(captured, index, groups, class_ids)
        probs = out["probs"]
        bg = self.cfg.background_id
        instances = None
        if self.params.split_instances and "center" in out:
            ids = decode_instances(probs.argmax(0), out["center"], out["offset"], bg, self.params.center_threshold)
            instances = F.interpolate(ids[None, None].float(), size=size, mode="nearest")[0, 0].long().numpy()
        if not len(class_ids):
            return ObjectMaps(probs.new_zeros((0, *size)), instances)
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
        return ObjectMaps(k_maps.clamp(0, 1), instances)
