#!/bin/bash
# The decoder experiment at tiny scale (RESULTS.md §9): a tiny Llama pretrained here on generated sentences, then
# all-layer LoRA vs Act-LoRA at 75 % vs the baselines (all at 75 %) on the shipped instruction set, 3 seeds.
# Usage: bash benchmarks/results/decoders/run_compare.sh   (from anywhere; one thread per run)
cd "$(dirname "$0")/../../.."
MODEL=${MODEL:-/tmp/act-lora-tiny-llama}
out=benchmarks/results/decoders/tiny-llama-compare
[ -f "$MODEL/config.json" ] || OMP_NUM_THREADS=1 python benchmarks/tiny_decoder.py model "$MODEL" --layers 8 \
  --pretrain-steps 300
mkdir -p $out
echo "start $(date -u) $(git rev-parse --short HEAD)" >> $out/log.txt
OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 python -m act_lora_fast.cli compare --task text --model "$MODEL" \
  --train-file act_lora_fast/data/samples/instructions-train.jsonl \
  --eval-file act_lora_fast/data/samples/instructions-eval.jsonl \
  --fractions 0.75 --baseline-fraction 0.75 --seeds 3 --epochs 2 --batch-size 16 --max-seq-len 48 --lr 2e-3 \
  --calibration-samples 128 --clock process --timing-rounds 3 --no-progress --no-plots --no-save-adapter \
  --overwrite --output-dir $out >> $out/log.txt 2>&1
echo "end rc=$? $(date -u)" >> $out/log.txt
