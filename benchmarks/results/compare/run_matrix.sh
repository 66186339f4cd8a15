#!/bin/bash
# The issue-12 matrix on the bundled MiniLM, one task at a time (2 shared CPU cores), one thread per run.
# Usage: bash benchmarks/results/compare/run_matrix.sh [tasks...]   (from the repository root)
cd "$(dirname "$0")/../../.."
GLUE=${GLUE:-/work/shared/data/glue}
for task in ${@:-sst2 mrpc stsb}; do
  out=benchmarks/results/compare/$task
  mkdir -p $out
  echo "start $task $(date -u)" >> $out/log.txt
  OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 python -m act_lora_fast.cli compare --task $task --data-dir $GLUE \
    --seeds 3 --fractions 0.5 --baselines gradient,random,first,last,block_output,cost_aware \
    --random-draws 5 --max-train-samples 500 --max-eval-samples 1000 --max-seq-len 64 --epochs 1 \
    --batch-size 16 --lr 2e-3 --calibration-samples 128 --gradient-warmup-steps 16 \
    --clock process --timing-rounds 3 --no-progress --no-plots --no-save-adapter --output-dir $out >> $out/log.txt 2>&1
  echo "end $task rc=$? $(date -u)" >> $out/log.txt
done
