"""Training-curve plots of every trained model family (synthetic, tokenizers, the CIFAR-10
sweep, generators): training and validation losses per epoch of each run of a group, coloured
by schedule.
"""

from __future__ import annotations

import logging

import pandas as pd

from vqshrink.stages import stage
from vqshrink.stages.synthetic_report import COLORS, save_figure

log = logging.getLogger(__name__)


@stage
def curves(*, curves: list[str], figure: str, settings: dict, preset: str) -> None:
    """Training curves (seaborn) of every trained model of a group: one panel per run,
    training loss and validation loss per epoch, coloured by schedule."""
    import seaborn as sns

    frames = []
    for spec, path in zip(settings["runs"], curves):
        c = pd.read_csv(path)
        for column, label in settings["metrics"].items():
            if column in c and c[column].notna().any():
                frames.append(pd.DataFrame({"epoch": c["epoch"], "value": c[column],
                                            "metric": label, "run": spec["name"],
                                            "schedule": spec["schedule"]}))
    data = pd.concat(frames, ignore_index=True)
    palette = {k: COLORS[k] for k in ("baseline", "deferred") if k in set(data["schedule"])}
    palette.update({k: "#555555" for k in set(data["schedule"]) if k not in palette})
    grid = sns.relplot(data=data, x="epoch", y="value", hue="schedule", style="metric",
                       col="run", col_wrap=min(4, data["run"].nunique()), kind="line",
                       palette=palette, markers=bool(data["epoch"].max() <= 20),
                       height=2.6, aspect=1.2, facet_kws={"sharey": False},
                       seed=0)  # the band over seeds is bootstrapped: same inputs, same figure
    grid.set_titles("{col_name}", size=8)
    grid.set_axis_labels("epoch", "loss")
    grid.figure.suptitle(f"{settings['title']}, preset {preset}", y=1.02)
    save_figure(grid.figure, figure)
    log.info("curves: %d runs -> %s", data["run"].nunique(), figure)
