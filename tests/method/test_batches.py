"""Batch helpers of the method: token masks."""
import torch

from act_lora_fast.method.batches import align_mask


def test_align_mask_makes_integer_masks_boolean():
    """Issue 10.17: an integer mask holding a 2 must not count that token twice (nor break the flat case)."""
    mask = torch.tensor([[1, 2, 0], [2, 0, 0]])
    aligned = align_mask(mask, (2, 3))
    assert aligned.dtype == torch.bool and aligned.tolist() == [[True, True, False], [True, False, False]]
    flat = align_mask(mask, (3,))  # only the real tokens, flattened: all of them count once
    assert flat.dtype == torch.bool and flat.tolist() == [True, True, True]
