# The mix config with a live producer: synthaug generates into the store while training reads it.
_base_ = ['./toy_fcn_mix.py']

train_dataloader = dict(dataset=dict(empty='wait', wait_timeout=600))  # synthaug: start on an empty store
custom_hooks = [
    dict(type='SyntheticPoolHook', interval=20, log_interval=10),  # synthaug: adopt new samples every 20 iterations
    dict(type='SyntheticProducerHook', store={{_base_.synthetic_store}}, config='configs/generate/toy.yaml',
         device='cpu', target_pool=512),  # synthaug: on a GPU box, device='cuda:1'
]
