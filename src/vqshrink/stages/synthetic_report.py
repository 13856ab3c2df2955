"""Tables and figures of the synthetic experiments (Fig. 2, 3, 6, embeddings collapse)."""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from vqshrink.io import atomic_path, load_json, save_npz  # noqa: E402
from vqshrink.metrics.codebook import peak_positions  # noqa: E402
from vqshrink.stages import stage  # noqa: E402
from vqshrink.verdicts import paired_verdict  # noqa: E402

log = logging.getLogger(__name__)

METRICS = ["euclidean", "euclidean_rel", "perplexity", "usage", "dead_fraction", "mse",
           "mode_entropy", "modes_covered", "out_of_support", "embedding_peaks"]
SCHEDULE_LABEL = {"baseline": "w/o Deferred", "deferred": "w/ Deferred"}
COLORS = {"data": "#9aa5b1", "baseline": "#d1495b", "deferred": "#00798c", "tokens": "#edae49"}

# The paper's qualitative claims about deferral on the synthetic data (Sec. 4.1, 6.2):
# (metric, direction in which deferral should move it, what the paper says).
CLAIMS = [
    ("euclidean", +1, "tokens spread wider (larger mean pairwise Euclidean distance)"),
    ("euclidean_rel", +1, "tokens cover more of the embedding space (spread / embedding spread)"),
    ("perplexity", +1, "more even token usage (higher perplexity)"),
    ("mode_entropy", +1, "reconstructions spread over more modes (higher mode entropy)"),
    ("modes_covered", +1, "reconstructions cover more of the 10 modes"),
    ("mse", -1, "reconstruction closer to the data (lower MSE)"),
]


def save_figure(fig: plt.Figure, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)


def save_csv(frame: pd.DataFrame, path: str) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def metrics_frame(paths: list[str]) -> pd.DataFrame:
    rows = []
    for path in paths:
        rec = load_json(path)
        s = rec["settings"]
        rows.append({
            "preset": rec["preset"],
            "dataset": f"gaussian-mixture-{s['input_dim']}d",
            "input_dim": s["input_dim"],
            "token_dim": s["token_dim"],
            "encoder_hidden": s["encoder_hidden"] or s["hidden"],
            "schedule": s["schedule"],
            "seed": str(s["seed"]),
            **rec["metrics"],
        })
    return pd.DataFrame(rows)


def with_summary(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per-seed rows followed by ``seed = mean`` and ``seed = std`` rows for each group."""
    out = []
    for _, group in frame.groupby(keys, sort=True):
        out.append(group)
        values = group[METRICS].astype(float)
        first = group.iloc[0]
        for name, agg in (("mean", values.mean()), ("std", values.std(ddof=1))):
            row = first.copy()
            row["seed"] = name
            row[METRICS] = agg
            out.append(row.to_frame().T)
    return pd.concat(out, ignore_index=True)


def claims_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Does deferral move each metric the way the paper says, per input dim? Verdicts by
    :func:`vqshrink.verdicts.paired_verdict`: "reproduced" needs every seed to agree and the
    mean paired difference to exceed twice its standard error (``paired_se``)."""
    rows = []
    for dim, group in frame.groupby("input_dim"):
        pivot = {s: g.set_index("seed") for s, g in group.groupby("schedule")}
        base, defer = pivot["baseline"], pivot["deferred"]
        seeds = sorted(set(base.index) & set(defer.index))
        for metric, sign, text in CLAIMS:
            b = base.loc[seeds, metric].astype(float)
            d = defer.loc[seeds, metric].astype(float)
            v = paired_verdict(sign * (d.to_numpy() - b.to_numpy()))
            rows.append({
                "preset": group["preset"].iloc[0], "input_dim": dim, "metric": metric,
                "paper_claim": text, "baseline_mean": b.mean(), "deferred_mean": d.mean(),
                "baseline_std": b.std(ddof=1), "deferred_std": d.std(ddof=1),
                "deferred_minus_baseline": d.mean() - b.mean(),
                "paired_se": v["diff_se"], "seeds_agreeing": v["seeds_agreeing"],
                "verdict": v["verdict"],
            })
    return pd.DataFrame(rows)


@stage
def tables(*, metrics: list[str], table: str, claims: str, settings: dict, preset: str) -> None:
    frame = metrics_frame(metrics)
    save_csv(with_summary(frame, ["input_dim", "schedule"]), table)
    verdicts = claims_frame(frame)
    save_csv(verdicts, claims)
    for _, row in verdicts.iterrows():
        log.info("dim %s %-14s %s", row.input_dim, row.metric, row.verdict)


# ---------------------------------------------------------------- projections (Fig. 2)
def _tsne(blocks: list[np.ndarray], perplexity: float, seed: int) -> list[np.ndarray]:
    """One joint t-SNE of several point sets (so their 2-D positions are comparable)."""
    from sklearn.manifold import TSNE

    stacked = np.concatenate(blocks).astype(np.float64)
    if stacked.shape[1] <= 2:
        flat = stacked if stacked.shape[1] == 2 else np.c_[stacked, np.zeros(len(stacked))]
    else:
        flat = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(stacked)
    return np.split(flat, np.cumsum([len(b) for b in blocks])[:-1])


@stage
def project(*, baseline: str, deferred: str, projection: str, settings: dict, preset: str) -> None:
    """2-D coordinates of data, reconstructions, embeddings and tokens of both arms."""
    runs = {name: dict(np.load(path)) for name, path in (("baseline", baseline),
                                                          ("deferred", deferred))}
    rng = np.random.default_rng(0)
    x = runs["baseline"]["x"]
    pick = rng.choice(len(x), size=min(settings["points"], len(x)), replace=False)
    data2, recon_b, recon_d = _tsne(
        [x[pick], runs["baseline"]["x_hat"][pick], runs["deferred"]["x_hat"][pick]],
        settings["perplexity"], 0)
    out = {"labels": runs["baseline"]["labels"][pick], "data": data2,
           "recon_baseline": recon_b, "recon_deferred": recon_d}
    for name, run in runs.items():
        z, codebook = run["z"], run["codebook"]
        if z.shape[1] <= 2:
            out[f"z_{name}"], out[f"tokens_{name}"] = z[pick], codebook
        else:
            out[f"z_{name}"], out[f"tokens_{name}"] = _tsne([z[pick], codebook],
                                                            settings["perplexity"], 0)
    save_npz(projection, **out)


LEGEND = {"data": "data", "embeddings": "encoder embeddings",
          "init": "initial codebook (k-means)", "trained": "trained tokens"}


def _axis_labels(ax, view: str | None) -> None:
    """Name the two plotted coordinates: raw ``x1``/``x2`` or a t-SNE projection."""
    names = ("t-SNE 1", "t-SNE 2") if view == "t-SNE" else (f"{view or 'x'}1", f"{view or 'x'}2")
    ax.set_xlabel(names[0], fontsize=8)
    ax.set_ylabel(names[1], fontsize=8)


def _scatter_pair(ax, background, foreground, fg_label, fg_color, title,
                  view: str | None = None) -> None:
    ax.scatter(*background.T, s=3, c=COLORS["data"], alpha=0.5, label=LEGEND["data"],
               linewidths=0)
    ax.scatter(*foreground.T, s=3, c=fg_color, alpha=0.6, label=fg_label, linewidths=0)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
    _axis_labels(ax, view)
    ax.legend(loc="best", fontsize=7, markerscale=3)


def _token_panel(ax, z: np.ndarray, tokens: np.ndarray, color: str, title: str,
                 token_label: str = LEGEND["trained"], view: str | None = "z") -> None:
    """Embeddings (grey) and codebook tokens (``color``): histograms for a 1-D latent
    (tokens counted on a twin axis), a scatter of both otherwise; ``view`` names the
    plotted coordinates (``z`` -> z1, z2; ``t-SNE``)."""
    if z.ndim == 1 or z.shape[1] == 1:
        z, tokens = z.reshape(-1), tokens.reshape(-1)
        lo, hi = np.percentile(np.r_[z, tokens], [0.5, 99.5])
        bins = np.linspace(lo, hi, 80)
        ax.hist(z, bins=bins, density=True, color=COLORS["data"], alpha=0.7,
                label=LEGEND["embeddings"])
        ax2 = ax.twinx()
        ax2.hist(tokens, bins=bins, color=color, alpha=0.6, label=token_label)
        ax2.set_yticks([])
        ax.set_yticks([])
        ax.set_xlabel("latent value (1-D)", fontsize=8)
        ax.set_ylabel("embedding density", fontsize=8)
        ax2.set_ylabel("tokens per bin", fontsize=8)
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax2.legend(handles=handles, loc="upper right", fontsize=7)
    else:
        ax.scatter(*z.T, s=3, c=COLORS["data"], alpha=0.4, linewidths=0,
                   label=LEGEND["embeddings"])
        ax.scatter(*tokens.T, s=12, c=color, marker="x", label=token_label)
        ax.set_xticks([]), ax.set_yticks([])
        _axis_labels(ax, view)
        ax.legend(loc="best", fontsize=7, markerscale=2)
    ax.set_title(title, fontsize=9)


def draw_fig2(projections: list[dict], input_dims: list[int], token_dims: dict,
              preset: str) -> plt.Figure:
    """Fig. 2 from the projections of each input dim: per schedule, data vs reconstruction
    and embeddings vs tokens."""
    dims = input_dims
    fig, axes = plt.subplots(len(dims), 4, figsize=(13, 3.1 * len(dims)), squeeze=False)
    for row, (dim, p) in enumerate(zip(dims, projections)):
        data_view = "x" if dim <= 2 else "t-SNE"
        latent_view = "z" if int(token_dims[str(dim)]) <= 2 else "t-SNE"
        suffix = "" if dim <= 2 else " (t-SNE)"
        for col, sched in enumerate(("baseline", "deferred")):
            color = COLORS[sched]
            _scatter_pair(axes[row, 2 * col], p["data"], p[f"recon_{sched}"], "reconstruction",
                          color, f"{dim}-D {SCHEDULE_LABEL[sched]}: data vs recon{suffix}",
                          view=data_view)
            _token_panel(axes[row, 2 * col + 1], p[f"z_{sched}"], p[f"tokens_{sched}"], color,
                         f"{dim}-D {SCHEDULE_LABEL[sched]}: tokens vs embeddings",
                         view=latent_view)
    fig.suptitle(f"Fig. 2: token representation shrinkage on synthetic data (preset {preset})")
    fig.tight_layout()
    return fig


@stage
def fig2(*, projections: list[str], figure: str, settings: dict, preset: str) -> None:
    loaded = [dict(np.load(path)) for path in projections]
    save_figure(draw_fig2(loaded, settings["input_dims"], settings["token_dims"], preset),
                figure)


# ---------------------------------------------------------------- Fig. 3 and Fig. 6
def _density_with_peaks(ax, values: np.ndarray, color: str, title: str) -> int:
    values = values.reshape(-1)
    peaks = peak_positions(values)
    sns.histplot(values, bins=120, stat="density", color=color, alpha=0.5, ax=ax, edgecolor=None)
    for x in peaks:
        ax.axvline(float(x), color="k", lw=0.6, ls=":")
    ax.set_title(f"{title}\n{len(peaks)} peaks, range [{values.min():.2f}, {values.max():.2f}]",
                 fontsize=9)
    ax.set_yticks([])
    ax.set_xlabel("encoder output (1-D)", fontsize=8)
    ax.set_ylabel("density", fontsize=8)
    return len(peaks)


def draw_fig3(init: dict, final: dict, preset: str) -> plt.Figure:
    """Fig. 3: per schedule, the k-means codebook on its encoder's embeddings, then the
    tokens after VQ training (``init``/``final``: schedule -> arrays ``z``, ``codebook``)."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 6))
    for row, sched in enumerate(("baseline", "deferred")):
        encoder = "untrained" if sched == "baseline" else "pretrained"
        _token_panel(axes[row, 0], init[sched]["z"], init[sched]["codebook"], COLORS["tokens"],
                     f"{SCHEDULE_LABEL[sched]}: k-means init on the {encoder} encoder",
                     token_label=LEGEND["init"])
        _token_panel(axes[row, 1], final[sched]["z"], final[sched]["codebook"], COLORS[sched],
                     f"{SCHEDULE_LABEL[sched]}: after VQ training")
    fig.suptitle(f"Fig. 3: codebook initialisation and shrinkage (preset {preset})")
    fig.tight_layout()
    return fig


@stage
def fig3_fig6(*, baseline_init: list[str], deferred_init: list[str], baseline_eval: list[str],
              deferred_eval: list[str], fig3: str, fig6: str, settings: dict,
              preset: str) -> None:
    init = {"baseline": dict(np.load(baseline_init[0])), "deferred": dict(np.load(deferred_init[0]))}
    final = {"baseline": dict(np.load(baseline_eval[0])), "deferred": dict(np.load(deferred_eval[0]))}
    if init["baseline"]["z"].shape[1] != 1:
        raise ValueError("fig3/fig6 need 1-D tokens: set synthetic.figure_input_dim to an input "
                         "dim whose token dim is 1")
    save_figure(draw_fig3(init, final, preset), fig3)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    n_untrained = _density_with_peaks(axes[0], init["baseline"]["z"], COLORS["baseline"],
                                      "untrained encoder output")
    n_trained = _density_with_peaks(axes[1], init["deferred"]["z"], COLORS["deferred"],
                                    "trained (autoencoder) encoder output")
    fig.suptitle(f"Fig. 6: encoder output distributions, 10 input modes (preset {preset})")
    fig.tight_layout()
    save_figure(fig, fig6)
    log.info("peaks: untrained encoder %d, trained encoder %d", n_untrained, n_trained)


# ---------------------------------------------------------------- embeddings collapse
@stage
def embeddings_collapse(*, metrics: list[str], samples: list[str], table: str, figure: str,
                        settings: dict, preset: str) -> None:
    frame = metrics_frame(metrics)
    save_csv(with_summary(frame, ["encoder_hidden"]), table)
    shown = [(m, s) for m, s in zip(metrics, samples)
             if str(load_json(m)["settings"]["seed"]) == str(settings["figure_seed"])]
    shown.sort(key=lambda ms: -(load_json(ms[0])["settings"]["encoder_hidden"]
                                or load_json(ms[0])["settings"]["hidden"]))
    fig, axes = plt.subplots(len(shown), 2, figsize=(9, 3 * len(shown)), squeeze=False)
    for row, (mpath, spath) in enumerate(shown):
        rec, run = load_json(mpath), dict(np.load(spath))
        hidden = rec["settings"]["encoder_hidden"] or rec["settings"]["hidden"]
        m = rec["metrics"]
        _token_panel(axes[row, 0], run["z"], run["codebook"], COLORS["tokens"],
                     f"encoder hidden {hidden}: embeddings ({m['embedding_peaks']} peaks) "
                     "and tokens")
        x, x_hat = run["x"], run["x_hat"]
        _scatter_pair(axes[row, 1], x[:, :2], x_hat[:, :2], "reconstruction", COLORS["baseline"],
                      f"encoder hidden {hidden}: {100 * m['out_of_support']:.1f}% of "
                      f"reconstructions off the data")
    fig.suptitle(f"Embeddings collapse: encoder capacity (preset {preset})")
    fig.tight_layout()
    save_figure(fig, figure)

