# Step 2 of the pre-train-then-fine-tune recipe: real images only, starting from the synthetic model.
# Run it with --cfg-options load_from=work_dirs/toy_fcn_synthetic_pretrain/iter_<N>.pth (step 1's last checkpoint).
_base_ = ["./toy_fcn_real.py"]

load_from = "work_dirs/toy_fcn_synthetic_pretrain/iter_400.pth"  # step 1 with its default 400 iterations
