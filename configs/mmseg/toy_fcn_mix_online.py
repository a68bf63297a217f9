# The mix config with a live producer: synthaug generates into the store while training reads it.
_base_ = ['./toy_fcn_mix.py']

# synthaug: start on an empty store; the reader lease keeps what training reads while the producer rolls the pool
train_dataloader = dict(dataset=dict(empty='wait', wait_timeout=600, reader_lease=True))
custom_hooks = [
    dict(type='SyntheticPoolHook', interval=20),  # synthaug: adopt new samples every 20 iterations
    dict(type='SyntheticProducerHook', store={{_base_.synthetic_store}}, config='configs/generate/toy.yaml',
         device='cpu', target_pool=512),  # synthaug: on a GPU box, device='cuda:1'
]
