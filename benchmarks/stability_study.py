"""The ranking-stability study of the Act-LoRA paper's claim, reproducible offline on the bundled MiniLM.

Same as ``act-lora stability``; for example (the run recorded in benchmarks/RESULTS.md):

    python benchmarks/stability_study.py --data-dir ../shared/data/glue --seeds 5 --out runs/stability
"""
import sys

from act_lora_fast.cli import main

if __name__ == "__main__":
    sys.exit(main(["stability", *sys.argv[1:]]))
