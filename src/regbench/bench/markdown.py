"""``bench.md``: the csv as readable tables, one function per section, every time also as a
ratio to its reference."""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

from regbench.bench.settings import REFERENCE


def summary_markdown(rows: pd.DataFrame) -> str:
    """The whole summary: the device, then each section present in ``rows``, in bench order."""
    device = ", ".join(sorted(rows["device"].unique()))
    parts = [f"# regbench bench\n\nDevice: {device}\n"]
    for section, render in SECTION_MARKDOWN.items():
        block = rows[rows["section"] == section]
        if len(block):
            parts += render(block)
    return "\n".join(parts)


def render_markdown(rows: pd.DataFrame) -> list[str]:
    """Milliseconds per image per size, with the speed-up over diffdrr's trilinear renderer,
    and each image's difference to it."""
    parts = []
    timed = rows[rows["metric"].str.endswith(" ms")]
    if len(timed):
        parts.append(
            "## Rendering (ms per image; in brackets: speed-up over diffdrr trilinear forward, "
            "resp. forward+backward)\n"
        )
        for size, block in timed.groupby("size"):
            ref = block[block["name"] == REFERENCE].set_index("metric")["value"]
            lines = [
                f"### {size} x {size}\n",
                "| renderer | mode | ms | speed-up |",
                "|---|---|---|---|",
            ]
            for _, r in block.iterrows():
                mode = r["metric"].removesuffix(" ms")
                base = ref.get("forward ms" if mode == "forward" else "forward+backward ms")
                ratio = f"{base / r['value']:.1f}x" if base else ""
                lines.append(f"| {r['name']} | {mode} | {r['value']:.1f} | {ratio} |")
            parts.append("\n".join(lines) + "\n")
        diffs = rows[rows["metric"].str.startswith("relative L2")]
        lines = [
            "Relative L2 difference of each image to diffdrr trilinear:\n",
            "| renderer | size | relative L2 |",
            "|---|---|---|",
        ]
        lines += [f"| {r['name']} | {r['size']} | {r['value']:.2e} |" for _, r in diffs.iterrows()]
        parts.append("\n".join(lines) + "\n")
    return parts


def jacobian_markdown(jac: pd.DataFrame) -> list[str]:
    """Seconds per pose Jacobian, and each as a multiple of the fastest."""
    fastest = jac["value"].min()
    lines = [
        f"## Pose Jacobian of one image ({jac['size'].iloc[0]} x {jac['size'].iloc[0]})\n",
        "| method | seconds | x fastest |",
        "|---|---|---|",
    ]
    lines += [
        f"| {r['name']} | {r['value']:.4g} | {r['value'] / fastest:.1f} |"
        for _, r in jac.iterrows()
    ]
    return ["\n".join(lines) + "\n"]


def convergence_markdown(conv: pd.DataFrame) -> list[str]:
    """Every optimiser's metrics side by side, and how much sooner LM reaches sub-mm."""
    table = conv.pivot_table(index="metric", columns="name", values="value", sort=False)
    names = list(table.columns)
    lines = [
        f"## Time to sub-millimetre mTRE from a 5 deg / 10 mm start "
        f"({conv['size'].iloc[0]} x {conv['size'].iloc[0]}, DRR vs DRR, multiscale NCC)\n",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for metric, values in table.iterrows():
        lines.append(f"| {metric} | " + " | ".join(f"{v:.3g}" for v in values) + " |")
    secs = table.loc["median seconds to sub-mm"]
    lm = [n for n in names if n.startswith("LM")]
    if lm and math.isfinite(secs[lm[0]]) and secs[lm[0]] > 0:
        lines.append("")
        for adam in (n for n in names if n.startswith("Adam")):
            lines.append(
                f"- {lm[0]} reaches sub-mm {secs[adam] / secs[lm[0]]:.1f}x sooner than "
                f"{adam} (median seconds)."
            )
    return ["\n".join(lines) + "\n"]


def minimum_markdown(drift: pd.DataFrame) -> list[str]:
    """Median drift from the truth per refiner: mTRE, depth and in-plane."""
    table = drift.pivot_table(index="name", columns="metric", values="value", sort=False)
    lines = [
        f"## Started at the ground truth: median drift over {drift['size'].iloc[0]} X-rays "
        "(mm; a refiner whose minimum is at the truth stays near 0)\n",
        "| method | mTRE | depth | in-plane |",
        "|---|---|---|---|",
    ]
    for name, r in table.iterrows():
        lines.append(
            f"| {name} | {r['median drift mTRE']:.3f} | {r['median drift depth']:.3f} | "
            f"{r['median drift in-plane']:.3f} |"
        )
    return ["\n".join(lines) + "\n"]


def training_markdown(curve: pd.DataFrame) -> list[str]:
    """Accuracy per start and number of training steps."""
    lines = [
        "## Training steps vs accuracy (learned similarity retrained on a finished run)\n",
        "| start | training steps | median mTRE (mm) | mean mTRE (mm) | SMSR (%) |",
        "|---|---|---|---|---|",
    ]
    table = curve.pivot_table(index=["name", "size"], columns="metric", values="value", sort=False)
    for (name, n_steps), r in table.iterrows():
        lines.append(
            f"| {name} | {n_steps} | {r['median mTRE']:.3f} | {r['mean mTRE']:.3f} | "
            f"{r['SMSR']:.0f} |"
        )
    return ["\n".join(lines) + "\n"]


def dag_markdown(dag: pd.DataFrame) -> list[str]:
    """Seconds per rule, largest first, with each rule's share of the job time."""
    table = dag.pivot_table(index="name", columns="metric", values="value")
    total = table["total seconds"].sum()
    lines = [
        "## DAG: seconds per rule (sum over jobs, from Snakemake's benchmark files)\n",
        "| rule | jobs | seconds | share | max RSS (MB) |",
        "|---|---|---|---|---|",
    ]
    for rule, r in table.sort_values("total seconds", ascending=False).iterrows():
        lines.append(
            f"| {rule} | {r['jobs']:.0f} | {r['total seconds']:.0f} | "
            f"{100 * r['total seconds'] / total:.0f}% | {r['max RSS']:.0f} |"
        )
    lines.append(f"\nSum of job times: {total:.0f} s (jobs run in parallel: wall time is less).")
    return ["\n".join(lines) + "\n"]


def capture_markdown(capture: pd.DataFrame) -> str:
    """SMSR, median and mean mTRE (the mean over registrations that returned a pose, as in
    Table 3) per method (rows) and start offset (columns)."""
    table = capture.pivot_table(
        index=["name", "size"], columns="metric", values="value", sort=False
    )
    offsets = table.groupby(level="size").first()
    labels = [
        f"{r['offset deg']:g} deg / {r['offset mm']:g} mm (start {r['start median mTRE']:.1f} mm)"
        for _, r in offsets.iterrows()
    ]
    iterations = int(table["LM iterations"].max())
    budget = f"LM's first pass {iterations} iterations" if iterations else "the run's settings"
    lines = [
        f"## Capture range: SMSR (%) / median / mean mTRE (mm) from the truth moved by each offset "
        f"({table['X-rays'].max():.0f} X-rays, {budget}; start: its median mTRE)\n",
        "| method | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for name in table.index.get_level_values("name").unique():
        cells = [
            f"{table.loc[(name, k), 'SMSR']:.0f} / {table.loc[(name, k), 'median mTRE']:.3g} / "
            f"{table.loc[(name, k), 'mean mTRE']:.3g}"
            for k in offsets.index
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seeds_markdown(seeds: pd.DataFrame) -> str:
    """Mean mTRE per variant and training seed, their mean and spread over trainings, and each
    variant's paired difference to the first variant (same training seed)."""
    table = seeds.pivot_table(index="name", columns="size", values="value", sort=False)
    first = table.index[0]
    lines = [
        "## Spread between trainings: mean mTRE (mm) per training seed (0: the run's own model)\n",
        "| method | "
        + " | ".join(str(k) for k in table.columns)
        + f" | mean ± std | minus {first} (paired) | below {first} |",
        "|---|" + "---|" * (len(table.columns) + 3),
    ]

    def sample_std(values: pd.Series) -> float:
        return float(values.std(ddof=1)) if len(values) > 1 else 0.0

    for name, values in table.iterrows():
        diff = values - table.loc[first]
        spread = f"{values.mean():.3f} ± {sample_std(values):.3f}"
        paired = "–" if name == first else f"{diff.mean():+.3f} ± {sample_std(diff):.3f}"
        below = "–" if name == first else f"{int((diff < 0).sum())} of {len(diff)}"
        cells = " | ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {name} | {cells} | {spread} | {paired} | {below} |")
    return "\n".join(lines) + "\n"


def latents_markdown(latents: pd.DataFrame) -> str:
    """Per geometry and encoder features on / off: SMSR, mean and median mTRE, the paired
    difference to the model's own geometry and the encoder part's share of the embedding."""
    table = latents.pivot_table(index="name", columns="metric", values="value", sort=False)
    iterations = int(table["LM iterations"].max())
    budget = f"both LM passes {iterations} iterations" if iterations else "the run's settings"
    lines = [
        "## One trained model under each latent geometry, encoder features on and off "
        f"({latents['size'].max()} X-rays, starts' median mTRE "
        f"{table['start median mTRE'].iloc[0]:.1f} mm, {budget}; mTRE in mm; differences "
        "paired per X-ray with the model's own geometry, same features)\n",
        "| model, geometry, features | SMSR (%) | mean | median | mean minus own "
        "| median abs. difference | encoder share |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in table.iterrows():
        lines.append(
            f"| {name} | {r['SMSR']:.0f} | {r['mean mTRE']:.4f} | {r['median mTRE']:.4f} | "
            f"{r['mean minus own geometry']:+.4f} | {r['median |difference| to own geometry']:.4f} "
            f"| {r['encoder share']:.3f} |"
        )
    return "\n".join(lines) + "\n"


SECTION_MARKDOWN: dict[str, Callable[[pd.DataFrame], list[str]]] = {
    "render": render_markdown,
    "jacobian": jacobian_markdown,
    "convergence": convergence_markdown,
    "minimum": minimum_markdown,
    "capture": lambda block: [capture_markdown(block)],
    "training": training_markdown,
    "seeds": lambda block: [seeds_markdown(block)],
    "latents": lambda block: [latents_markdown(block)],
    "dag": dag_markdown,
}
