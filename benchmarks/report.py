"""Latency reports: Markdown, CSV and a log-log plot, all from the JSON report."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CSV_FIELDS = (
    "backend",
    "device",
    "mode",
    "batch",
    "repetitions",
    "p50_us",
    "p90_us",
    "p99_us",
    "p99_9_us",
    "mean_us",
    "stdev_us",
    "images_per_s",
    "fraction_of_ceiling",
    "ceiling",
    "capture_ms",
    "creation_ms",
    "first_inference_ms",
    "provider",
    "threads",
)


def latency_csv(report: dict[str, Any]) -> str:
    """One CSV row per cell of the latency grid."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for cell in report["cells"]:
        writer.writerow({**cell, "threads": str(cell.get("threads"))})
    return buffer.getvalue()


def latency_markdown(report: dict[str, Any]) -> str:
    """The latency grid as Markdown, with the environment and the summary ratios."""
    env, ceiling, summary = report["environment"], report["ceiling"], report["summary"]
    lines = [
        f"Latency and throughput — {env['cpu']}, {env['usable_cores']} cores, onnxruntime "
        f"{env['packages']['onnxruntime']}, torch {env['packages']['torch']}; budget {report['config']['budget_s']} s per cell.",
        "",
        f"Arithmetic ceiling: sgemm peak {ceiling['sgemm_gflops']:.0f} GFLOP/s / {ceiling['flop_per_image']} FLOP per image "
        f"= {ceiling['images_per_s']:,.0f} images/s.",
        "",
    ]
    gpu = ceiling.get("gpu")
    if gpu:
        lines += [
            f"GPU ceilings ({gpu['gpu']}): fp32 matmul {gpu['fp32_tflops']:.1f} TFLOP/s = "
            f"{gpu['compute_images_per_s']:,.0f} images/s; pinned host->device copy {gpu['h2d_gb_per_s']:.1f} GB/s "
            f"/ 784 bytes an image = {gpu['h2d_images_per_s']:,.0f} images/s. Host -> host CUDA rows are held to the "
            f"smaller ({gpu['host_to_host_binds']} binds), resident rows (input and answers on the GPU) to the fp32 "
            "arithmetic; CPU rows to the CPU's ceiling above.",
            "",
        ]
    lines += [
        "| backend | device | mode | batch | p50 µs | p90 µs | p99 µs | p99.9 µs | mean µs | images/s | % of ceiling | provider |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    over = False
    for c in report["cells"]:
        fraction = c["fraction_of_ceiling"]
        over |= fraction > 1
        share = f"{100 * fraction:.1f}" if fraction <= 1 else "—†"
        lines.append(
            f"| {c['backend']} | {c['device']} | {c['mode']} | {c['batch']} | {c['p50_us']:,.1f} | {c['p90_us']:,.1f} | "
            f"{c['p99_us']:,.1f} | {c['p99_9_us']:,.1f} | {c['mean_us']:,.1f} | {c['images_per_s']:,.0f} | "
            f"{share} | {c['provider']} |"
        )
    for row in report.get("not_installed", []):
        lines.append(f"| {row['backend']} | {row['device']} | — | — | — | — | — | — | — | — | — | {row['reason']} |")
    if over:
        lines += [
            "",
            "† above the ceiling: the sgemm peak, timed once and briefly, came out low (noise), so this cell's share "
            "of it means nothing; the interleaved rounds (--ceiling-rounds) measure both side by side.",
        ]
    captures = [c for c in report["cells"] if c.get("capture_ms") is not None and c["mode"] == "model"]
    if captures:
        lines += ["", "CUDA graph captures, timed apart from the calls above:", ""]
        lines += ["| backend | batch | capture ms |", "|---|---:|---:|"]
        lines += [f"| {c['backend']} | {c['batch']} | {c['capture_ms']:.1f} |" for c in captures]
    errors = {c["backend"]: c["cuda_graph_error"] for c in report["cells"] if c.get("cuda_graph_error")}
    for backend, why in errors.items():
        lines.append(f"- {backend}: CUDA graphs off after a failed capture ({why})")
    lines += ["", "| load + first call | creation ms | first inference ms |", "|---|---:|---:|"]
    seen = set()
    for c in report["cells"]:
        key = (c["backend"], c["device"])
        if key not in seen:
            seen.add(key)
            lines.append(f"| {c['backend']} / {c['device']} | {c['creation_ms']:.1f} | {c['first_inference_ms']:.2f} |")
    lines += ["", "Summary (ratios from this one run):", ""]
    header = len(lines)
    if "best_cpu_batch_ge_1000" in summary:
        b = summary["best_cpu_batch_ge_1000"]
        lines.append(
            f"- best fp32 CPU backend at batch ≥ 1000: {b['backend']} at batch {b['batch']}, "
            f"{b['images_per_s']:,.0f} images/s = **{100 * b['fraction_of_ceiling']:.0f} %** of the ceiling"
        )
    if "predict_b1_over_numpy_b1" in summary:
        lines.append(
            f"- `runtime.load(...).predict` (ONNX) at batch 1 / bare numpy forward: **{summary['predict_b1_over_numpy_b1']:.2f}×** "
            f"(bare `session.run`: {summary.get('bare_session_b1_over_numpy_b1', float('nan')):.2f}×)"
        )
    if "predict_b1_over_bare_session_b1" in summary:
        lines.append(
            f"- `predict` / bare `session.run` of the same file at batch 1 (p50): "
            f"**{summary['predict_b1_over_bare_session_b1']:.2f}×**"
        )
    if "ceiling_fraction_interleaved" in summary:
        c = summary["ceiling_fraction_interleaved"]
        rounds = ceiling.get("interleaved", {}).get("rounds", "?")
        lines.append(
            f"- the same, measured stably ({rounds} interleaved rounds of sgemm peak and model): {c['backend']} at "
            f"batch {c['batch']}: **{100 * c['median']:.0f} %** of the ceiling (median; rounds "
            f"{100 * c['min']:.0f}–{100 * c['max']:.0f} %)"
        )
    if "fastest_cpu_interleaved" in summary:
        lines += ["", "Interleaved rounds, median % of the ceiling per round:", ""]
        lines += [
            "| batch | fastest toolkit backend | % | fastest rival | % | toolkit fastest |",
            "|---:|---|---:|---|---:|---|",
        ]
        for batch, f in summary["fastest_cpu_interleaved"].items():
            lines.append(
                f"| {batch} | {f['toolkit']} | {100 * f['toolkit_median_fraction']:.0f} | {f['rival']} | "
                f"{100 * f['rival_median_fraction']:.0f} | {'yes' if f['toolkit_is_fastest'] else 'NO'} |"
            )
        fractions = ceiling.get("interleaved", {}).get("fractions", {})
        lines += ["", "| row @ batch | median % | min % | max % |", "|---|---:|---:|---:|"]
        for key, v in sorted(fractions.items(), key=lambda item: -item[1]["median"]):
            lines.append(f"| {key} | {100 * v['median']:.0f} | {100 * v['min']:.0f} | {100 * v['max']:.0f} |")
        lines.append("")
    if any("rival" in f for f in summary.get("fastest_cpu_per_batch", {}).values()):
        lines += [
            "",
            "Grid cells (one measurement each; images/s at the median call; a winner only where one side's p90 is "
            "below the other's p50):",
            "",
        ]
        lines += ["| batch | fastest toolkit backend | images/s | fastest rival | images/s | toolkit fastest |"]
        lines.append("|---:|---|---:|---|---:|---|")
        for batch, f in summary["fastest_cpu_per_batch"].items():
            if "rival" not in f:
                verdict, rival_speed = "— (no rival measured)", "—"
            else:
                rival_speed = f"{f['rival_images_per_s']:,.0f}"
                verdict = "within noise" if not f.get("decided", True) else "yes" if f["toolkit_is_fastest"] else "NO"
            lines.append(
                f"| {batch} | {f['toolkit']} | {f['toolkit_images_per_s']:,.0f} | {f.get('rival', '—')} | "
                f"{rival_speed} | {verdict} |"
            )
        lines.append("")
    if "int8_over_fp32_throughput_b1000" in summary:
        lines.append(
            f"- int8 / fp32 ONNX throughput at batch 1000: **{summary['int8_over_fp32_throughput_b1000']:.2f}×**"
        )
    if "cuda_overtakes_cpu_at_batch" in summary:
        lines.append(f"- CUDA overtakes the CPU at batch: {summary['cuda_overtakes_cpu_at_batch']}")
    for backend, entry in summary.get("cuda", {}).items():
        parts = []
        for label, words in (("host_to_host", "host -> host"), ("resident", "resident")):
            if f"{label}_b1_p50_us" in entry:
                parts.append(f"{words} batch 1 p50 {entry[f'{label}_b1_p50_us']:,.1f} µs")
            if f"{label}_best" in entry:
                b = entry[f"{label}_best"]
                parts.append(
                    f"{words} best {b['images_per_s']:,.0f} images/s at batch {b['batch']} "
                    f"({100 * b['fraction_of_ceiling']:.0f} % of the {b['ceiling']} ceiling)"
                )
        lines.append(f"- {backend} on CUDA: " + "; ".join(parts))
    if len(lines) == header:
        lines.append(
            "- nothing to compare in this grid: the ratios need the ONNX Runtime and numpy rows at batch 1, "
            "batch sizes of 1000 or more, or a rival measured beside a toolkit backend."
        )
    return "\n".join(lines) + "\n"


# The plot's rows, one per way of timing a call.
MODE_TITLES = {
    "model": "model call alone",
    "resident": "model call, images already on the GPU",
    "end_to_end": "end to end from PNG files (decode + model)",
}


def latency_figure(report: dict[str, Any]) -> Figure:
    """p50 latency and throughput against batch size, one line per backend and device: the model call alone
    (top, with the arithmetic ceiling) apart from end to end from PNG files (bottom); the title names the machine."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    present = {c["mode"] for c in report["cells"]}
    modes = [m for m in (*MODE_TITLES, *sorted(present - set(MODE_TITLES))) if m in present]
    fig = Figure(figsize=(14, 4.6 * len(modes)))
    grid = fig.subplots(len(modes), 2, squeeze=False)
    # One colour per backend, the same in every panel, from a 16-colour cycle.
    palette = [f"C{i}" for i in range(10)] + ["#393b79", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#31a354"]
    colours = {b: palette[i % len(palette)] for i, b in enumerate(dict.fromkeys(c["backend"] for c in report["cells"]))}
    for row, mode in enumerate(modes):
        batches = sorted({c["batch"] for c in report["cells"] if c["mode"] == mode})
        ax_lat, ax_thr = grid[row]
        series: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for c in report["cells"]:
            if c["mode"] == mode:
                series.setdefault((c["backend"], c["device"]), []).append(c)
        for (backend, device), cells in sorted(series.items()):
            cells.sort(key=lambda c: c["batch"])
            x = [c["batch"] for c in cells]
            style = "--" if device == "cuda" else "-"
            label = f"{backend} / {device}"
            colour = colours[backend]
            ax_lat.plot(x, [c["p50_us"] for c in cells], style, color=colour, marker="o", ms=3, label=label)
            ax_thr.plot(x, [c["images_per_s"] for c in cells], style, color=colour, marker="o", ms=3, label=label)
        what = MODE_TITLES.get(mode, mode)
        if mode == "model":  # the ceiling bounds the arithmetic of a model call, not decoding files
            ax_thr.axhline(
                report["ceiling"]["images_per_s"], color="black", lw=0.8, ls=":", label="arithmetic ceiling (CPU)"
            )
        ax_lat.set(xscale="log", yscale="log", xlabel="batch size", ylabel="p50 latency per call (µs)")
        ax_lat.set_title(f"Latency, {what}", fontsize=10)
        ax_thr.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images / s")
        ax_thr.set_title(f"Throughput, {what}", fontsize=10)
        for ax in (ax_lat, ax_thr):
            ax.set_xticks(batches, [f"{b:,}" for b in batches])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.grid(alpha=0.3, which="both")
        ax_thr.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    env = report["environment"]
    fig.suptitle(
        f"Latency and throughput — {env.get('cpu', '?')}, {env.get('usable_cores', '?')} cores; "
        f"onnxruntime {env.get('packages', {}).get('onnxruntime', '?')}, torch {env.get('packages', {}).get('torch', '?')}",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


def latency_plot(report: dict[str, Any], path: Path) -> None:
    """`latency_figure(report)` as a PNG, written atomically."""
    from fmnist_deploy.atomic import atomic_path

    fig = latency_figure(report)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
