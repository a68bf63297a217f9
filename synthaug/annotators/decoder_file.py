"""The learned annotator's file: one safetensors file holding the decoder's weights, its config, the
signature of the model it was trained on and its training record as metadata (no pickle)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthaug.annotators.decoder_net import DecoderConfig, PerceptionDecoder

DECODER_FORMAT = "synthaug-decoder"
FORMAT_VERSION = 1


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
