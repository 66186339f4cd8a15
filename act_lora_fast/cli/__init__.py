"""`act-lora`: the command line (``act_lora_fast.cli:main``; ``python -m act_lora_fast.cli`` under torchrun)."""
from .main import main

__all__ = ["main"]
