#!/usr/bin/env bash
# The one-shot GPU check (issue 11), <= 5 min wall on an H200 including compiles, so a second try fits:
#   1. headline   bf16 ratio table: cuBLAS floor (forward + dx), ours per backend (triton, torch), PEFT, at
#                 (8192,4096,4096,16) and two more shapes, the H200 roofline prediction beside each ratio
#   2. correctness fp32/fp16/bf16, ranks 1/16/64, bias/no bias, dropout 0/0.1, an odd shape, vs float64,
#                 with ACT_LORA_TRITON_AUTOTUNE=0 (one config per kernel: compiles stay bounded)
#   3. e2e        one training step under bf16 autocast, random BERT-large and a ~1B Llama-style decoder,
#                 ours vs PEFT vs the adapter-free floor
#   4. backend_table  best of triton/torch per measured shape -> $OUT/backend_table.json (ACT_LORA_BACKEND_TABLE)
# Every section has its own timeout and always prints one "SUMMARY <section> ..." line (its own, or
# "SUMMARY <section> TIMEOUT"/"FAILED" from here); every log and JSON lands in $OUT (a temp dir when unset).
#   bash benchmarks/gpu_check.sh                          (needs torch, triton, transformers, peft, a GPU)
#   GPU_CHECK_CPU_SMOKE=1 bash benchmarks/gpu_check.sh    (the same script on CPU, Triton's interpreter, tiny sizes)
#   GPU_CHECK_SECTIONS=e2e,backend_table bash benchmarks/gpu_check.sh   (a second try of some sections only)
# GPU_CHECK_T_HEADLINE / _CORRECTNESS / _E2E / _BACKEND_TABLE override a section's timeout (seconds).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:$PWD/benchmarks:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
OUT="${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}"
mkdir -p "$OUT"
START=$(date +%s)

if [ "${GPU_CHECK_CPU_SMOKE:-0}" = "1" ]; then
    export TRITON_INTERPRET=1 OMP_NUM_THREADS=1   # two OpenMP threads on a shared 2-core box run 5-50x slower
    DEVICE=cpu
    HEADLINE_ARGS=(--shapes "128,64,96,8;67,40,24,4" --rounds 1 --inner 1 --no-norms)
    CHECK_ARGS=(--smoke)
    E2E_ARGS=(--smoke --rounds 1)
    T_HEADLINE=60 T_CHECK=60 T_E2E=90 T_TABLE=30   # generous: the box running CI may be shared
else
    unset TRITON_INTERPRET
    DEVICE=cuda
    HEADLINE_ARGS=(--rounds 7)
    CHECK_ARGS=()
    E2E_ARGS=(--rounds 2)
    T_HEADLINE=85 T_CHECK=95 T_E2E=90 T_TABLE=15
fi
T_HEADLINE=${GPU_CHECK_T_HEADLINE:-$T_HEADLINE} T_CHECK=${GPU_CHECK_T_CORRECTNESS:-$T_CHECK}
T_E2E=${GPU_CHECK_T_E2E:-$T_E2E} T_TABLE=${GPU_CHECK_T_BACKEND_TABLE:-$T_TABLE}
SECTIONS=",${GPU_CHECK_SECTIONS:-headline,correctness,e2e,backend_table},"
budget() { echo $(( $1 > 40 ? $1 - 20 : $1 / 2 )); }   # a script's soft budget under its hard timeout
echo "gpu_check: OUT=$OUT device=$DEVICE smoke=${GPU_CHECK_CPU_SMOKE:-0} $(date -u +%FT%TZ) commit=$(git rev-parse --short HEAD 2>/dev/null)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

# section NAME TIMEOUT_S SHOW CMD...: runs CMD with its output in $OUT/NAME.log, prints the log lines matching
# the regex SHOW (the table, failing cases) and then the section's SUMMARY line, also kept in $OUT/SUMMARY.txt.
# The Python scripts get a soft budget (--budget-s) under the hard timeout, so they normally finish with their
# own SUMMARY; the hard timeout is the fallback.
section() {
    local name=$1 limit=$2 show=$3 rc line
    shift 3
    if [[ $SECTIONS != *",$name,"* ]]; then
        echo "SUMMARY $name SKIPPED (not in GPU_CHECK_SECTIONS)" | tee -a "$OUT/SUMMARY.txt"
        return
    fi
    echo "== $name (timeout ${limit}s) =="
    timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    grep -E "$show" "$OUT/$name.log" | grep -v "^SUMMARY" | head -n 40
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        line="SUMMARY $name TIMEOUT after ${limit}s (partial log: $OUT/$name.log)"
    else
        line=$(grep -m1 "^SUMMARY $name" "$OUT/$name.log") \
            || line="SUMMARY $name FAILED rc=$rc, no summary line (see $OUT/$name.log)"
    fi
    [ "$rc" = 0 ] || tail -n 6 "$OUT/$name.log" | grep -v "^SUMMARY"
    echo "$line" | tee -a "$OUT/SUMMARY.txt"
    RCS+=("$name=$rc")
}
RCS=()
: > "$OUT/SUMMARY.txt"

section headline "$T_HEADLINE" "^(device=|T=| {4}|skipped)" \
    python3 benchmarks/lora_linear_ratios.py --device "$DEVICE" --dtype bfloat16 --backends triton,torch \
    --budget-s "$(budget "$T_HEADLINE")" --json "$OUT/headline.json" ${HEADLINE_ARGS[@]+"${HEADLINE_ARGS[@]}"}

ACT_LORA_TRITON_AUTOTUNE=0 section correctness "$T_CHECK" "^FAIL" \
    python3 benchmarks/gpu_kernel_check.py --device "$DEVICE" --backends triton,torch \
    --budget-s "$(budget "$T_CHECK")" ${CHECK_ARGS[@]+"${CHECK_ARGS[@]}"}

section e2e "$T_E2E" "^(bert|llama|  )" \
    python3 benchmarks/gpu_e2e.py --device "$DEVICE" --backends triton,torch --budget-s "$(budget "$T_E2E")" \
    --json "$OUT/e2e.json" ${E2E_ARGS[@]+"${E2E_ARGS[@]}"}

section backend_table "$T_TABLE" "^$^" \
    python3 benchmarks/backend_table.py --ratios "$OUT/headline.json" --out "$OUT/backend_table.json"

echo "== SUMMARY ($(( $(date +%s) - START )) s; logs and JSON in $OUT) =="
cat "$OUT/SUMMARY.txt"
echo "exit codes: ${RCS[*]}"
for rc in "${RCS[@]}"; do [ "${rc#*=}" = 0 ] || exit 1; done
exit 0
