"""Cold import of `from act_lora_fast import FastActLoRALinear`: before and after a commit, interleaved.

    python benchmarks/cold_import.py [BEFORE_REV] [AFTER_REV]     (defaults: 5a81006 and HEAD)

Each revision's package is exported with `git archive` into a temp folder; every run is a fresh process.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROUNDS = 7
PROBE = ("import time, sys; import torch; t = time.perf_counter(); from act_lora_fast import FastActLoRALinear; "
         "print(time.perf_counter() - t, int('act_lora_fast.train' in sys.modules), "
         "sum(m in sys.modules for m in ('scipy', 'matplotlib', 'datasets', 'transformers', 'triton')))")


def export(rev, folder):
    os.makedirs(folder)
    archive = subprocess.run(["git", "archive", rev, "act_lora_fast"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def main():
    revs = sys.argv[1:3] if len(sys.argv) > 1 else ["5a81006", "HEAD"]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {rev: export(rev, os.path.join(tmp, str(i))) for i, rev in enumerate(revs)}
        after_torch = {rev: [] for rev in trees}
        whole = {rev: [] for rev in trees}
        loaded = {}
        for _ in range(ROUNDS):
            for rev, path in trees.items():
                env = {**os.environ, "PYTHONPATH": path}
                start = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", PROBE], cwd=path, env=env, capture_output=True,
                                     text=True, check=True).stdout.split()
                whole[rev].append(time.perf_counter() - start)
                after_torch[rev].append(float(out[0]))
                loaded[rev] = (out[1] == "1", int(out[2]))
        for rev in trees:
            print(f"{rev}: {statistics.median(after_torch[rev]) * 1e3:.0f} ms after torch, "
                  f"{statistics.median(whole[rev]):.2f} s whole process (medians of {ROUNDS}); "
                  f"loads act_lora_fast.train: {loaded[rev][0]}; heavy libraries loaded: {loaded[rev][1]}")


if __name__ == "__main__":
    main()
