"""Compile every kernel config that survives the prunes for sm_90 down to cubin (no GPU needed), printing
registers, stack (spills) and shared memory per config: catches what only the real compiler rejects.

    PYTHONPATH=. python benchmarks/triton_sm90_compile_check.py      # ~5 min on 2 cores; ends with FAILS <n>
"""
import argparse
import os
import time

argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
os.environ.pop('TRITON_INTERPRET', None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from act_lora_fast.kernels.triton import backward as Bk, forward as F, utils as U
target = GPUTarget("cuda", 90, 32)

ONES_BY = {"_shrink_rowsq_kernel": {"stride_xk", "stride_ak"}, "_lora_fwd_kernel": {"stride_xk", "stride_wk", "stride_bias", "stride_br", "stride_yn"},
           "_dy_rows_kernel": {"stride_dyn", "stride_br"}, "_dy_pass_kernel": {"stride_dyn", "stride_br"}, "_lora_dx_kernel": {"stride_dyk", "stride_wn", "stride_an", "stride_dxn"},
           "_lora_dA_kernel": {"stride_xk"}, "_dropout_mask_kernel": set()}
def compile_kernel(fn, ptrs, floats, consts, dt, num_warps=4, num_stages=3):
    # Mimic the JIT's specialization of a launch with contiguous tensors and 16-divisible sizes.
    sig, attrs, consts = {}, {}, dict(consts)
    for i, n in enumerate(fn.arg_names):
        if n in consts: sig[n] = "constexpr"
        elif n in ONES_BY[fn.__name__]: consts[n] = 1; sig[n] = "constexpr"
        elif n in ptrs: sig[n] = "*" + ptrs[n].replace("DT", dt); attrs[(i,)] = [["tt.divisibility", 16]]
        elif n in floats: sig[n] = "fp32"
        elif n == 'seed': sig[n] = "i64"
        else:
            sig[n] = "i32"
            if n != "R": attrs[(i,)] = [["tt.divisibility", 16]]
    t = time.time()
    k = triton.compile(ASTSource(fn, sig, constexprs=consts, attrs=attrs), target=target, options=dict(num_warps=num_warps, num_stages=num_stages))
    import subprocess, tempfile
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"]); f.flush()
        res = subprocess.run([os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump"), "-res-usage", f.name], capture_output=True, text=True).stdout
    import re
    m = re.search(r"REG:(\d+).*?STACK:(\d+).*?SHARED:(\d+)", res)
    short = {k_: v for k_, v in consts.items() if k_ not in ("HAS_BIAS", "GROUP_M", "COMPUTE_ROWSQ") and not k_.startswith("stride")}
    print(f"{fn.__name__:21s} {dt} w{num_warps}s{num_stages} REG={m.group(1)} STACK={m.group(2)} SMEM={k.metadata.shared} {short} {time.time()-t:.1f}s", flush=True)

fails = 0
def guard(*a, **kw):
    if "BLOCK_R" in a[3] and a[0].__name__ not in ("_lora_fwd_kernel", "_lora_dx_kernel"): kw.setdefault("num_warps", 8 if a[3]["BLOCK_R"] >= 64 else 4)
    global fails
    try: compile_kernel(*a, **kw)
    except Exception as e:
        fails += 1; print("FAIL", a[0].__name__, a[3], type(e).__name__, str(e)[:400], flush=True)

plan = [("bf16", False, U.GEMM_CONFIGS_16, (16, 128)), ("fp32", True, U.GEMM_CONFIGS_32, (16, 128)), ("fp16", False, U.GEMM_CONFIGS_16[:1], (16,))]
for dt, f32, cfgs, brs in plan:
    for BR in brs:
        for drop in (False, True):
            guard(F._shrink_rowsq_kernel, dict(x_ptr="DT", a_ptr="DT", xa_ptr="fp32", rowsq_ptr="fp32"), {"p", "drop_scale"},
                  dict(COMPUTE_ROWSQ=True, HAS_DROPOUT=drop, F32_DOT=f32, BLOCK_M=16, BLOCK_K=64, BLOCK_R=BR), dt)
            guard(Bk._lora_dA_kernel, dict(dyb_ptr="fp32", x_ptr="DT", part_ptr="fp32"), {"p", "drop_scale", "scaling"},
                  dict(HAS_DROPOUT=drop, F32_DOT=f32, BLOCK_M=32 if f32 else 64, BLOCK_K=32 if f32 and BR >= 128 else 64, BLOCK_R=BR), dt)
        guard(Bk._dy_rows_kernel, dict(dy_ptr="DT", b_ptr="DT", dyb_ptr="fp32", dy_rowsq_ptr="fp32"), set(),
              dict(HAS_DYB=True, DY_ROWSQ=True, F32_DOT=f32, BLOCK_M=16, BLOCK_N=64, BLOCK_R=BR), dt)
        fused = BR <= 32  # as lora_backward: dy @ B rides on the dB pass at small ranks
        guard(Bk._dy_pass_kernel, dict(dy_ptr="DT", b_ptr="DT", xa_ptr="fp32", dyb_part_ptr="fp32", db_part_ptr="fp32", rowsq_part_ptr="fp32"),
              {"scaling"}, dict(HAS_DYB=fused, HAS_DB=True, DY_ROWSQ=fused, F32_DOT=f32, BLOCK_M=32, BLOCK_N=min(256, 8192 // BR), BLOCK_R=BR), dt, num_warps=8)
        for cfg in F.prune_forward_configs(cfgs, F32_DOT=f32, BLOCK_R=U.gemm_block_r(BR, f32)):
            for has_lora, rowsq in ((True, False), (False, True)):
                flags = dict(HAS_LORA=has_lora, HAS_BIAS=True, ROWSQ=rowsq, F32_DOT=f32, BLOCK_R=U.gemm_block_r(BR, f32), **cfg.kwargs)
                guard(F._lora_fwd_kernel, dict(x_ptr="DT", w_ptr="DT", bias_ptr="DT", xa_ptr="fp32", b_ptr="DT", y_ptr="DT", rowsq_ptr="fp32"),
                      {"scaling"}, flags, dt, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        for drop in (False, True):
            for cfg in Bk.prune_dx_configs(cfgs, F32_DOT=f32, HAS_DROPOUT=drop, BLOCK_R=U.gemm_block_r(BR, f32)):
                for has_lora, rowsq in ((True, False), (False, True)):
                    if drop and not has_lora: continue
                    flags = dict(HAS_LORA=has_lora, HAS_DROPOUT=drop, DY_ROWSQ=rowsq, F32_DOT=f32, BLOCK_R=U.gemm_block_r(BR, f32), **cfg.kwargs)
                    guard(Bk._lora_dx_kernel, dict(dy_ptr="DT", w_ptr="DT", dyb_ptr="fp32", a_ptr="DT", dx_ptr="DT", dy_rowsq_ptr="fp32"),
                          {"scaling", "p", "drop_scale"}, flags, dt, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
guard(F._dropout_mask_kernel, dict(out_ptr="fp32"), {"p", "drop_scale"}, dict(BLOCK_M=64, BLOCK_K=64), "fp32")
print("FAILS", fails)
