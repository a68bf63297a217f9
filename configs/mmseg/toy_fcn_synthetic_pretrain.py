# Step 1 of the pre-train-then-fine-tune recipe: the toy FCN trained on synthetic samples only.
# Make the folders with `synthaug export --format mmseg data/toy_store data/toy_synthetic`; validation stays
# on the real val images. Step 2 is toy_fcn_real_finetune.py with load_from=<this run's last checkpoint>.
_base_ = ["./toy_fcn_real.py"]

train_dataloader = dict(dataset=dict(data_root="data/toy_synthetic"))  # img_dir/train + ann_dir/train
