#!/bin/bash
# Adds seeds to a finished matrix (run_matrix.sh's settings; 2 random draws per seed, as there): --seeds N --resume
# keeps the runs already in compare.json.
# Usage: SEEDS=5 bash benchmarks/results/compare/run_more_seeds.sh sst2 [more tasks]   (from the repository root)
cd "$(dirname "$0")/../../.."
GLUE=${GLUE:-/work/shared/data/glue}
for task in "$@"; do
  out=benchmarks/results/compare/$task
  echo "resume $task with ${SEEDS:-5} seeds $(date -u)" >> $out/log.txt
  OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 python -m act_lora_fast.cli compare --task $task --data-dir $GLUE \
    --seeds ${SEEDS:-5} --resume --fractions 0.5 --baselines gradient,random,first,last,block_output,cost_aware \
    --random-draws $((2 * ${SEEDS:-5})) --max-train-samples 500 --max-eval-samples 1000 --max-seq-len 64 --epochs 1 \
    --batch-size 16 --lr 2e-3 --calibration-samples 128 --gradient-warmup-steps 16 \
    --clock process --timing-rounds 3 --no-progress --no-plots --no-save-adapter --output-dir $out >> $out/log.txt 2>&1
  echo "end $task rc=$? $(date -u)" >> $out/log.txt
done
