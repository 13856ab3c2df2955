"""Generation tables (paper Tables 4, 6, 7, 8, 11, 12) and Fig. 5.

Each table row is one generator run (generator x tokenizer variant x schedule) with the run's
g-FID, pixel distance and LPIPS diversity beside the paper's printed values
(``workflow/resources/paper_tables.csv``; empty where the paper has none, e.g. Table 12), the
preset, the dataset actually used and the paper's, and the labels of the networks behind
g-FID and LPIPS (a substitute is named as such in every row). Table 11 also carries the
tokenizer's metrics, scaled as :mod:`vqshrink.stages.tokenizer_report` explains.

The paper prints g-FID, pixel distance and LPIPS diversity unscaled. Pixel distance is the
Euclidean distance between images in [0, 1] by default (``generators.eval.pixel_norm``;
:mod:`vqshrink.metrics.diversity` says why), recorded in the ``pixel_norm`` column.
"""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vqshrink.io import load_json  # noqa: E402
from vqshrink.stages import stage  # noqa: E402
from vqshrink.stages.generator import class_grid  # noqa: E402
from vqshrink.stages.synthetic_report import COLORS, save_csv, save_figure  # noqa: E402
from vqshrink.stages.tokenizer_report import (  # noqa: E402
    SCHEDULE_LABEL,
    paper_value,
    paper_values,
    row_labels,
    tokenizer_columns,
)

log = logging.getLogger(__name__)

DATASET_NAMES = {"imagenet100": "ImageNet-100", "odir": "ODIR", "cifar10": "CIFAR-10"}
# paper_tables.csv metric name -> our metrics.json key (printed unscaled)
GENERATION_METRICS = {"g-FID": "gfid", "Pixel Dist": "pixel_distance",
                      "LPIPS D": "lpips_diversity"}


@stage
def table(*, metrics: list[str], records: list[str], paper: str, table: str, settings: dict,
          preset: str, tokenizer_metrics: list[str] | None = None) -> None:
    """One generation table: a row per (generator, tokenizer, schedule), beside the paper."""
    paper_rows = paper_values(paper, settings["table"])
    tok_paths = tokenizer_metrics or [None] * len(metrics)
    rows = []
    for spec, m_path, r_path, t_path in zip(settings["rows"], metrics, records, tok_paths):
        m = load_json(m_path)["metrics"]
        rec = load_json(r_path)
        deferred = spec["schedule"] == "deferred"
        row = row_labels(settings, spec, preset)
        row["generator"] = spec["generator"]
        if t_path is not None:
            row.update(tokenizer_columns(load_json(t_path)["metrics"], spec, paper_rows,
                                         deferred, settings["table"]))
        for metric, key in GENERATION_METRICS.items():
            row[key] = m[key]
            row[f"paper_{key}"] = paper_value(paper_rows, spec, deferred, metric)
        row.update({
            "fid_feature_net": m["fid_feature_net"],
            "fid_reference_images": m["fid_reference_images"],
            "lpips_backbone": m["lpips_backbone"],
            "pixel_norm": f"{m['pixel_norm']} x {m['pixel_scale']:.6g} (of [0, 255])",
            "samples": m["samples"],
            "samples_cap": settings.get("max_samples"),
            "train_images": rec.get("train_images"),
            "lpips_images": m["lpips_images"],
            "checkpoint": rec.get("checkpoint"),
            "epochs_run": rec.get("epochs_run"),
            "stopped_early": rec.get("stopped_early"),
            "parameters": rec.get("parameters"),
            "run": str(m_path).rsplit("/eval/", 1)[0],
        })
        for key in ("codebook_size", "tokens_per_image", "tokenizer_loss"):  # Table 11 has them
            row.setdefault(key, rec.get(key))
        rows.append(row)
    frame = pd.DataFrame(rows)
    save_csv(frame, table)
    for _, r in frame.iterrows():
        log.info("table %s %s/%s %-12s g-FID %.4g (paper %s)  pixel %.4g (paper %s)  "
                 "LPIPS-D %.4g (paper %s)", r["table"], r["generator"], r["variant"],
                 r["schedule"], r["gfid"], r["paper_gfid"], r["pixel_distance"],
                 r["paper_pixel_distance"], r["lpips_diversity"], r["paper_lpips_diversity"])


PANEL_GROUPS = (("baseline", "(a)"), ("deferred", "(b)"))


def draw_fig5(grids: list[np.ndarray], panels: list[dict], generator: str,
              preset: str) -> plt.Figure:
    """Fig. 5 laid out as the paper's: (a) w/o Deferred and (b) w/ Deferred, each with one
    panel per dataset in config order (ImageNet-100, then ODIR)."""
    datasets = list(dict.fromkeys(p["paper_dataset"] for p in panels))
    fig = plt.figure(figsize=(3.2 * len(panels), 4.0), layout="constrained")
    for subfig, (schedule, letter) in zip(fig.subfigures(1, len(PANEL_GROUPS)), PANEL_GROUPS):
        subfig.suptitle(f"{letter} {SCHEDULE_LABEL[schedule]}", fontsize=10,
                        color=COLORS[schedule])
        axes = subfig.subplots(1, len(datasets), squeeze=False)[0]
        for ax, paper_dataset in zip(axes, datasets):
            i = next(i for i, p in enumerate(panels)
                     if p["schedule"] == schedule and p["paper_dataset"] == paper_dataset)
            panel = panels[i]
            ax.imshow(grids[i], interpolation="nearest")
            name = DATASET_NAMES.get(paper_dataset, paper_dataset)
            ax.set_title(name + (f"\n(run on {panel['dataset']})"
                                 if panel["dataset"] != paper_dataset else ""), fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_xlabel("samples", fontsize=8)
            ax.set_ylabel("class (a row each)", fontsize=8)
    fig.suptitle(f"Fig. 5: {generator} samples, a row per class, preset {preset}", fontsize=10)
    return fig


@stage
def fig5(*, images: list[str], labels: list[str], figure: str, settings: dict,
         preset: str) -> None:
    """Fig. 5: VAR samples without and with deferral, ImageNet-100 and ODIR in each."""
    grids = [class_grid(np.load(img_path, mmap_mode="r"), np.load(lab_path),
                        settings["classes"], settings["per_class"])
             for img_path, lab_path in zip(images, labels)]
    save_figure(draw_fig5(grids, settings["panels"], settings["generator"], preset), figure)
