"""PNG plots of one training run: loss curve, step-time split and memory (and the layer scores, when profiled)."""
import os

from .._io import new_figure, save_figure


def plot_run(report, output_dir, *, scores=None):
    """Write ``loss.png``, ``cost.png`` (and ``layer_scores.png``) under `output_dir`; ``{name: path}``."""
    written = {}
    fig, (ax,) = new_figure(1, width=6, height=3.5)
    curve = report["loss_curve"]
    ax.plot([p["step"] for p in curve], [p["loss"] for p in curve], lw=1)
    ax.set(xlabel="optimizer step", ylabel="training loss",
           title=f"{report['task']} · {report['selection_label']}")
    written["loss"] = save_figure(fig, os.path.join(output_dir, "loss.png"))

    fig, (ax_time, ax_mem) = new_figure(2, width=4.5, height=3.5)
    bottom = 0.0
    for phase in ("forward", "backward", "optimizer"):
        value = report["step_time_ms"][phase]
        ax_time.bar([0], [value], bottom=bottom, label=phase)
        bottom += value
    ax_time.set(xticks=[], ylabel="ms per step (median)", title="step time")
    ax_time.legend(fontsize=8)
    memory = report["memory"]
    keys = ["after_forward_bytes", "peak_backward_bytes", "after_optimizer_bytes"]
    ax_mem.bar(range(len(keys)), [memory[k] / 2**20 for k in keys])
    ax_mem.set_xticks(range(len(keys)), ["after fwd", "peak bwd", "after opt"])
    ax_mem.set(ylabel="MiB", title=f"memory ({memory['source']})")
    written["cost"] = save_figure(fig, os.path.join(output_dir, "cost.png"))

    if scores is not None:
        written["layer_scores"] = scores.plot(os.path.join(output_dir, "layer_scores.png"))
    return written
