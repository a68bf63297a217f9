"""`SynthaugBatchSampler`: the mix plan for mmengine's loaders (see synthaug.mix_plan).

Set as `train_dataloader.batch_sampler` (`synthaug wrap-config` writes it), it wraps the sampler mmengine
built (InfiniteSampler, DefaultSampler) or your own batch sampler, tags every index with its place in
training, and decides each epoch's store snapshot before the epoch's first batch leaves, so DataLoader
workers that prefetch ahead serve exactly what a run without workers would, and `--resume` (mmengine
replays the stream up to the saved iteration) serves what an uninterrupted run would.
"""

from __future__ import annotations

from typing import Any

from mmseg.registry import DATA_SAMPLERS

from synthaug.mix import SyntheticMixDataset
from synthaug.mix_plan import PlannedBatchSampler


@DATA_SAMPLERS.register_module()
class SynthaugBatchSampler(PlannedBatchSampler):
    """mmengine builds it with the loader's `sampler` and `batch_size`; `batch_sampler` (a config or object)
    wraps a batch sampler of yours instead of batching the sampler here."""

    def __init__(self, sampler: Any, batch_size: int, batch_sampler: Any = None, drop_last: bool = False) -> None:
        dataset = getattr(sampler, "dataset", None)
        if hasattr(dataset, "full_init"):
            dataset.full_init()
        mix = getattr(dataset, "mix", None)  # not through wrappers: RepeatDataset's idx % len drops the tags
        if not isinstance(mix, SyntheticMixDataset):
            raise ValueError(
                "train_dataloader.batch_sampler=SynthaugBatchSampler needs train_dataloader.dataset to be the "
                f"SyntheticMixSegDataset itself, but it is {type(dataset).__name__}: put wrappers (RepeatDataset, "
                "ConcatDataset) inside it as its `real` dataset (`synthaug wrap-config` does), or remove the batch_sampler"
            )
        if isinstance(batch_sampler, dict):
            batch_sampler = DATA_SAMPLERS.build(
                batch_sampler, default_args=dict(sampler=sampler, batch_size=batch_size)
            )
        if batch_sampler is not None:
            super().__init__(mix, batch_size, batch_sampler=batch_sampler)
        else:
            super().__init__(mix, batch_size, sampler=sampler, drop_last=drop_last)
