"""Measurement: step accounting, the measuring harness, the cost model, scaling and PEFT comparisons."""
