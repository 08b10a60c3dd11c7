"""The search's plot: F1 against MACs and against latency, every candidate and the front (``pareto.png``)."""

from __future__ import annotations

from pathlib import Path

from quala.front import FrontPoint, pareto_front


def plot_pareto(
    candidates: list[FrontPoint],
    front: list[FrontPoint],
    path: str | Path,
    objective: str = "macs",
    title: str = "",
    rescored: bool = False,
) -> None:
    """F1 against GMACs and against latency: every candidate, the search's front highlighted (with its
    staircase on the objective's axis), the full-length configuration starred. ``rescored``: the front's F1 come
    from a larger sample than the candidates' (its staircase and star are then the front's own)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from quala.io import atomic_path

    panels = [
        ("macs", "GMACs per sequence at the reference length", 1e-9),
        ("latency", "median latency (ms)", 1.0),
    ]
    has_latency = all(c.latency_ms is not None for c in candidates)
    full_length = max(max(c.length_config) for c in candidates)
    scored = front if rescored else candidates  # the points whose F1 draw the staircase and the star
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (axis, label, scale) in zip(axes, panels, strict=True):
        if axis == "latency" and not has_latency:
            ax.text(0.5, 0.5, "latency not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        ax.scatter(
            [c.cost(axis) * scale for c in candidates],
            [c.f1 for c in candidates],
            s=12,
            color="0.65",
            label=f"candidates ({len(candidates)})",
        )
        stairs = pareto_front(scored, axis)  # the attainment staircase on this axis
        xs = [c.cost(axis) * scale for c in stairs] + [max(c.cost(axis) for c in candidates) * scale]
        ax.step(xs, [c.f1 for c in stairs] + [stairs[-1].f1], where="post", color="tab:red", lw=1, alpha=0.6)
        ax.scatter(
            [c.cost(axis) * scale for c in front],
            [c.f1 for c in front],
            s=30,
            color="tab:red",
            label=f"front ({objective}){', re-scored' if rescored else ''}",
            zorder=3,
        )
        full = [c for c in scored if min(c.length_config) == full_length]
        ax.scatter(
            [c.cost(axis) * scale for c in full],
            [c.f1 for c in full],
            marker="*",
            s=150,
            color="tab:blue",
            label="full length",
            zorder=4,
        )
        ax.set_xlabel(label)
        ax.set_ylabel("F1 on the search split")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
