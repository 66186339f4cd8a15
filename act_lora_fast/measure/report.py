"""The scaling suite's outputs: ``scaling.json``, Markdown tables and the PNG plots."""
import os

import numpy as np

from .._io import new_figure, save_figure, write_json
from .harness import TIME_KEYS

MARKERS = {"top": "o", "bottom": "s", "ranked": "x"}  # distinct so overlapping placements stay visible


def plot_scaling(results, out_dir):
    """``scaling_time.png`` (step time split per placement, with the fit) and ``scaling_memory.png``."""
    placements = results["placements"]
    title = f"{os.path.basename(str(results['model']).rstrip('/'))} · batch {results['batch_size']}×" \
            f"{results['seq_len']} · r={results['r']} · {results['device']} · " \
            f"{results.get('clock', 'wall')} clock, {results.get('threads', '?')} thread(s)"
    fig, axes = new_figure(len(placements))
    top = max(max(entry["step_ms"]) for entry in placements.values()) * 1.3  # headroom for the legend
    for ax, (name, entry) in zip(axes, placements.items()):
        ks = np.asarray(entry["k"])
        bottom = np.zeros(len(ks))
        for key, color in zip(TIME_KEYS[:3], ("tab:blue", "tab:orange", "tab:green")):
            values = np.asarray(entry[key])
            ax.bar(ks, values, bottom=bottom, color=color, label=key[:-3], width=0.6)
            bottom += values
        fit = entry["time_fit"]
        ax.plot(ks, fit["slope"] * ks + fit["intercept"], "k--",
                label=f"fit {fit['slope']:.0f} ms/k, R²={fit['r2']:.3f}")
        ax.set(title=f"{name}-k", xlabel="selected blocks k", ylabel="step time (ms)", ylim=(0, top))
        ax.set_xticks(ks)
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.suptitle(title, fontsize=10)
    time_path = save_figure(fig, os.path.join(out_dir, "scaling_time.png"))

    fig, axes = new_figure(2)
    for name, entry in placements.items():
        ks = np.asarray(entry["k"])
        for ax, key, fit_key in ((axes[0], "memory_bytes", "memory_fit"),
                                 (axes[1], "adapter_bytes", "adapter_memory_fit")):
            fit = entry[fit_key]
            mib = np.asarray(entry[key]) / 2**20
            line = ax.plot(ks, mib, MARKERS[name], label=f"{name}-k: {fit['slope'] / 2**20:.1f} MiB/k, "
                                               f"R²={fit['r2']:.3f}")[0]
            ax.plot(ks, (fit["slope"] * ks + fit["intercept"]) / 2**20, "--", color=line.get_color())
    source = next(iter(placements.values()))
    axes[0].set(title="training memory (peak)", xlabel="selected blocks k", ylabel="MiB")
    axes[1].set(title="adapters: weights + grads + AdamW state", xlabel="selected blocks k", ylabel="MiB")
    for ax in axes:
        ax.set_xticks(source["k"])
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    memory_path = save_figure(fig, os.path.join(out_dir, "scaling_memory.png"))
    return [time_path, memory_path]


def write_scaling(results, out_dir):
    """``scaling.json`` and the PNG plots under `out_dir`; returns the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [write_json(os.path.join(out_dir, "scaling.json"), results)]
    return paths + plot_scaling(results, out_dir)


def format_table(results):
    """A Markdown table: per placement and k, the step split, memory, and the fits."""
    lines = ["| placement | k | blocks | forward ms | backward ms | optimizer ms | step ms | memory MiB | "
             "adapters MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for name, entry in results["placements"].items():
        for i, k in enumerate(entry["k"]):
            lines.append(f"| {name} | {k} | {entry['layers'][i]} | {entry['forward_ms'][i]:.0f} | "
                         f"{entry['backward_ms'][i]:.0f} | {entry['optimizer_ms'][i]:.0f} | "
                         f"{entry['step_ms'][i]:.0f} | {entry['memory_bytes'][i] / 2**20:.1f} | "
                         f"{entry['adapter_bytes'][i] / 2**20:.2f} |")
    lines += ["", "| placement | time slope ms/k | time intercept ms | time R² | memory slope MiB/k | "
              "memory R² | adapters R² |", "|---|---|---|---|---|---|---|"]
    for name, entry in results["placements"].items():
        t, m, a = entry["time_fit"], entry["memory_fit"], entry["adapter_memory_fit"]
        lines.append(f"| {name} | {t['slope']:.1f} | {t['intercept']:.1f} | {t['r2']:.3f} | "
                     f"{m['slope'] / 2**20:.2f} | {m['r2']:.4f} | {a['r2']:.4f} |")
    analysis = results.get("analysis")
    if analysis:
        lines += ["", f"bottom block alone / all blocks (step time): {analysis['bottom1_over_all']:.2f}; "
                      f"top block alone / all blocks: {analysis['top1_over_all']:.2f}"]
    validation = results.get("cost_validation")
    if validation and validation["points"]:
        lines.append(f"cost model on unseen selections: max |error| step time "
                     f"{validation['max_abs_error']['step_ms']:.1%}, memory "
                     f"{validation['max_abs_error']['memory_bytes']:.1%}")
    elif validation:
        lines.append("cost model on unseen selections: none measured (every placement was used to fit it)")
    return "\n".join(lines)

