import os

# The Triton kernels run on CPU tensors in Triton's interpreter; triton reads this when kernels are defined,
# so it must be set before anything imports them.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
