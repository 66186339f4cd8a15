"""The Triton kernels (CUDA, or CPU tensors under TRITON_INTERPRET=1): utils (device checks, tile configs and
their tuner), forward, backward, and autograd (the torch.autograd.Functions). Importing this package imports
triton; `act_lora_fast.functional` does so only when the triton backend runs."""
