"""Models: where the blocks and linears are, PEFT-style target matching, injection, adapters, loading."""
