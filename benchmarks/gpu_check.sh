#!/usr/bin/env bash
# One prepared GPU check (< 8 min on an H200): Triton kernels vs float64 in fp32/fp16/bf16 on CUDA, then the
# interleaved kernel benchmark (Triton vs cuBLAS floor vs PEFT), then the end-to-end step against PEFT on a
# random BERT-large (issue 5). Needs torch, triton, transformers, peft.
#   bash benchmarks/gpu_check.sh            (from the repository root)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:$PWD/benchmarks:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

timeout 210 python3 benchmarks/gpu_kernel_check.py > /tmp/gpu_kernel_check.log 2>&1
check_rc=$?
grep -E "FAIL|SUMMARY|Error|error" /tmp/gpu_kernel_check.log | tail -n 30

timeout 150 python3 benchmarks/lora_linear_ratios.py --device cuda --dtype bfloat16 --rounds 7 > /tmp/gpu_ratios.log 2>&1
bench_rc=$?
cat /tmp/gpu_ratios.log | tail -n 20

timeout 100 python3 benchmarks/compare_peft.py --model bert-large-random --device cuda --batch-size 32 \
    --seq-len 256 --rounds 3 --json /tmp/gpu_vs_peft.json > /tmp/gpu_vs_peft.log 2>&1
e2e_rc=$?
tr "\r" "\n" < /tmp/gpu_vs_peft.log | grep -v "^measuring" | tail -n 14

echo "== SUMMARY =="
grep SUMMARY /tmp/gpu_kernel_check.log || echo "kernel check produced no summary (rc=$check_rc)"
echo "kernel check rc=$check_rc, kernel benchmark rc=$bench_rc, end-to-end rc=$e2e_rc"
tail -n 5 /tmp/gpu_ratios.log
tail -n 3 /tmp/gpu_vs_peft.log
[ -n "${OUT:-}" ] && cp /tmp/gpu_kernel_check.log /tmp/gpu_ratios.log /tmp/gpu_vs_peft.log /tmp/gpu_vs_peft.json \
    "$OUT"/ 2>/dev/null
exit $(( check_rc != 0 || bench_rc != 0 || e2e_rc != 0 ))
