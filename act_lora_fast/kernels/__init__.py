"""Everything that touches a tensor's bytes: Triton kernels, the fused torch path, the references.

Triton modules are imported lazily (by `act_lora_fast.functional`), so this package imports without triton.
"""
