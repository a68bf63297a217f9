# The real-only config plus synthetic samples from a store: the lines a user adds to their own config.
_base_ = ["./toy_fcn_real.py"]

custom_imports = dict(imports=["synthaug.integrations.mmseg"], allow_failed_imports=False)  # synthaug
synthetic_store = "data/toy_store"  # synthaug: written by `synthaug generate --config configs/generate/toy.yaml`
train_dataloader = dict(  # synthaug: wrap the real training set
    dataset=dict(
        _delete_=True,
        type="SyntheticMixSegDataset",
        real={{_base_.toy_train}},
        store=synthetic_store,
        ratio=0.5,
        seed=0,
        augment=dict(splice=dict(p_grid=0.3), blur=dict(p_gaussian=0.2, p_edge=0.2)),
    ),
    batch_sampler=dict(type="SynthaugBatchSampler"),  # synthaug: the planned draw, saved in checkpoints
)
# synthaug: new samples are adopted at each epoch's start; every 200 iterations, a grid of the synthetic inputs goes to the visualiser
custom_hooks = [dict(type="SyntheticPoolHook", interval=50, vis_interval=200)]
