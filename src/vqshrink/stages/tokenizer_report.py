"""Tokenizer tables (paper Tables 2, 3, 5, 9, 10) and Fig. 4 (CIFAR-10 codebook-size sweep).

Every table row carries the run's raw values, the paper's printed value beside each
(``workflow/resources/paper_tables.csv``), the preset, the dataset actually used and the
paper's dataset, and the labels of the networks behind r-FID and LPIPS, so that a demo
number (FID in a small classifier's feature space, LPIPS with a random trunk, digits
instead of ImageNet-100) cannot pass for a paper number.

How the paper scales MSE and LPIPS (worked out from its numbers; the paper does not say):

- MSE is printed x 100 on images in [-1, 1] (the VQGAN framework's range, which is also what
  the tokenizers here are trained and evaluated on). The printed values 2.05-4.64 then mean
  a mean squared error of 0.021-0.046 in [-1, 1], i.e. 0.005-0.012 in [0, 1]: a PSNR of
  19-23 dB, what a 16x16-token, 64-channel tokenizer reconstructs at 128 px. Read as x 100
  on [0, 1] they would mean 13-17 dB (blurrier than any usable tokenizer); as raw values,
  worse than predicting grey. Columns: ``mse`` (raw, [-1, 1]), ``mse_x100`` and
  ``paper_mse_x100``.
- LPIPS: no single factor fits every table, so the scale is per table
  (``LPIPS_SCALE_BY_TABLE``), the one its printed numbers fit:
  - x 10 for Tables 2, 3, 9 (ImageNet-100) and 11 (ODIR, MaskGIT): ImageNet-100's 1.19-2.70
    become 0.12-0.27, the usual reconstruction LPIPS of a 16x16-token tokenizer at 128 px
    (x 100 would give 0.012-0.027, far below any such tokenizer); Table 11's 0.90-1.30 become
    0.09-0.13, below ImageNet-100's MaskGIT (0.23-0.27) as ODIR's lower MSE suggests.
  - x 100 for Tables 5 and 10 (ODIR, VAR): 6.79-9.39 become 0.068-0.094. At x 10 they would
    be 0.68-0.94, seven times Table 11's ODIR MaskGIT LPIPS although ODIR VAR's MSE is lower
    than ODIR MaskGIT's (2.05-2.66 vs 3.16-4.64) and VAR's LPIPS is below MaskGIT's on
    ImageNet-100 (Table 3); x 100 keeps both orderings.
  The scale is our reading, not the paper's statement. Columns: ``lpips`` (raw),
  ``lpips_scale`` (the table's factor), ``lpips_scaled`` (raw x factor) and
  ``paper_lpips_scaled`` (the paper's number as printed).
- r-FID, Euclidean distance and perplexity are printed as they are.
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
from vqshrink.stages.synthetic_report import COLORS, save_csv, save_figure  # noqa: E402

log = logging.getLogger(__name__)

MSE_SCALE = 100.0  # paper's MSE = 100 x MSE of images in [-1, 1] (module docstring)
# The factor each table's printed LPIPS fits (module docstring): table -> scale
LPIPS_SCALE_BY_TABLE = {"2": 10.0, "3": 10.0, "9": 10.0, "11": 10.0, "5": 100.0, "10": 100.0}
# paper_tables.csv metric name -> (our raw key, scale the paper prints, column stem); a
# scale of None is per table (LPIPS)
PAPER_METRICS = {
    "r-FID": ("rfid", 1.0, "rfid"),
    "MSE": ("mse", MSE_SCALE, "mse_x100"),
    "LPIPS": ("lpips", None, "lpips_scaled"),
    "Euc": ("euclidean", 1.0, "euclidean"),
    "Perp": ("perplexity", 1.0, "perplexity"),
}


def lpips_scale(table: str) -> float:
    """The factor the paper's printed LPIPS of ``table`` fits (LPIPS_SCALE_BY_TABLE)."""
    try:
        return LPIPS_SCALE_BY_TABLE[str(table)]
    except KeyError:
        raise ValueError(f"no LPIPS scale for table {table!r}; known tables: "
                         f"{sorted(LPIPS_SCALE_BY_TABLE, key=int)}") from None
YES_NO = {True: "yes", False: "no"}
SCHEDULE_LABEL = {"baseline": "w/o Deferred", "deferred": "w/ Deferred"}


def paper_values(path: str, table: str) -> pd.DataFrame:
    frame = pd.read_csv(path, comment="#", dtype={"table": str})
    return frame[frame["table"] == str(table)]


def lookup(paper: pd.DataFrame, *, model: str, variant: str, gan: bool, deferred: bool,
           metric: str) -> float:
    hit = paper[(paper["model"] == model) & (paper["variant"] == variant)
                & (paper["gan"] == YES_NO[gan]) & (paper["deferred"] == YES_NO[deferred])
                & (paper["metric"] == metric)]
    if len(hit) > 1:
        raise ValueError(f"paper_tables.csv has {len(hit)} rows for {model}/{variant}/"
                         f"gan={gan}/deferred={deferred}/{metric}")
    return float(hit["value"].iloc[0]) if len(hit) else float("nan")


def paper_value(paper: pd.DataFrame, spec: dict, deferred: bool, metric: str) -> float:
    """The paper's printed ``metric`` for a table row's spec (model, variant, GAN) and arm."""
    return lookup(paper, model=spec["paper_model"], variant=spec["paper_variant"],
                  gan=spec["gan"], deferred=deferred, metric=metric)


def tokenizer_columns(m: dict, spec: dict, paper: pd.DataFrame, deferred: bool,
                      table: str) -> dict:
    """A tokenizer's metrics (``metrics.json``) beside the paper's, scaled as ``table``
    prints them."""
    row = {}
    for metric, (key, scale, stem) in PAPER_METRICS.items():
        value = m.get(key)
        if scale is None:
            scale = row[f"{key}_scale"] = lpips_scale(table)
        if scale != 1.0:
            row[key] = value
        row[stem] = None if value is None else value * scale
        row[f"paper_{stem}"] = paper_value(paper, spec, deferred, metric)
    row.update({
        "usage": m["usage"],
        "dead_fraction": m["dead_fraction"],
        "codebook_size": m["codebook_size"],
        "tokens_per_image": m["tokens_per_image"],
        "eval_split": m["split"],
        "eval_images": m["images"],
        "fid_feature_net": m["fid_feature_net"],
        "lpips_backbone": m["lpips_backbone"],
        "tokenizer_loss": m.get("training_loss"),
        "mse_pixel_range": m["mse_pixel_range"],
    })
    return row


def row_labels(settings: dict, spec: dict, preset: str) -> dict:
    """The columns that say what a table row is: table, preset, datasets, model, arm."""
    return {
        "table": settings["table"],
        "preset": preset,
        "paper_dataset": settings["paper_dataset"],
        "dataset": settings["dataset"],
        "model": spec["paper_model"],
        "quantizer": spec["paper_variant"],
        "gan": YES_NO[spec["gan"]],
        "deferred": YES_NO[spec["schedule"] == "deferred"],
        "schedule": SCHEDULE_LABEL[spec["schedule"]],
        "variant": spec["variant"],
    }


def table_rows(metrics: list[str], records: list[str], tokens: list[str], paper_csv: str,
               settings: dict, preset: str) -> pd.DataFrame:
    paper = paper_values(paper_csv, settings["table"])
    out = []
    for spec, m_path, r_path, t_path in zip(settings["rows"], metrics, records, tokens):
        rec = load_json(r_path)
        row = row_labels(settings, spec, preset)
        row.update(tokenizer_columns(load_json(m_path)["metrics"], spec, paper,
                                     spec["schedule"] == "deferred", settings["table"]))
        row.update({
            "checkpoint": rec.get("checkpoint"),
            "epochs_run": rec.get("epochs_run"),
            "stopped_early": rec.get("stopped_early"),
            "tokens": t_path.rsplit("/", 1)[0],
        })
        out.append(row)
    return pd.DataFrame(out)


@stage
def table(*, metrics: list[str], records: list[str], tokens: list[str], paper: str, table: str,
          settings: dict, preset: str) -> None:
    """One tokenizer table: a row per (variant, schedule), run values beside the paper's."""
    frame = table_rows(metrics, records, tokens, paper, settings, preset)
    save_csv(frame, table)
    for _, r in frame.iterrows():
        log.info("table %s %s %s %-12s r-FID %s (paper %s)  Euc %.3g (paper %s)  Perp %.1f "
                 "(paper %s)", r["table"], r["model"], r["quantizer"], r["schedule"],
                 r["rfid"], r["paper_rfid"], r["euclidean"], r["paper_euclidean"],
                 r["perplexity"], r["paper_perplexity"])


# ---------------------------------------------------------------- Fig. 4
FIG4_METRICS = [("mse", "MSE (test, images in [-1, 1])"), ("perplexity", "perplexity"),
                ("euclidean", "codebook mean pairwise distance")]


@stage
def fig4(*, metrics: list[str], records: list[str], table: str, figure: str, settings: dict,
         preset: str) -> None:
    """Fig. 4: MSE, perplexity and codebook distance vs codebook size, w/ and w/o deferral."""
    rows = []
    for m_path, r_path in zip(metrics, records):
        m = load_json(m_path)["metrics"]
        run = load_json(r_path)
        run_dir = str(m_path).rsplit("/eval/", 1)[0]  # .../vqvae-k{K}/{schedule}
        rows.append({
            "preset": preset,
            "paper_dataset": settings["paper_dataset"],
            "dataset": settings["dataset"],
            "codebook_size": m["codebook_size"],
            "tokens_per_image": m.get("tokens_per_image"),
            "deferred": YES_NO[run_dir.endswith("/deferred")],
            "mse": m["mse"],
            "perplexity": m["perplexity"],
            "euclidean": m["euclidean"],
            "usage": m["usage"],
            "dead_fraction": m["dead_fraction"],
            "eval_split": m["split"],
            "eval_images": m["images"],
            "epochs_run": run.get("epochs_run"),
            "run": run_dir,
        })
    frame = pd.DataFrame(rows)
    frame = frame.sort_values(["deferred", "codebook_size"], ascending=[False, True])
    save_csv(frame, table)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, label) in zip(axes, FIG4_METRICS):
        for deferred, color, name in (("no", COLORS["baseline"], "w/o Deferred"),
                                      ("yes", COLORS["deferred"], "w/ Deferred")):
            part = frame[frame["deferred"] == deferred].sort_values("codebook_size")
            ax.plot(part["codebook_size"], part[key], "o-", color=color, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("codebook size")
        ax.set_ylabel(label)
        if key == "perplexity":
            ax.set_yscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Fig. 4: VQ-VAE over codebook sizes on {settings['dataset']} "
                 f"(paper: {settings['paper_dataset']}), preset {preset}")
    fig.tight_layout()
    save_figure(fig, figure)
    log.info("fig4: %d runs over codebook sizes %s", len(frame),
             sorted(set(np.asarray(frame["codebook_size"]).tolist())))
