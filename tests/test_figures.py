"""Figures a reader can read: legends, axis labels and the paper's panel grouping.

Each test runs the real stage on small arrays and inspects the matplotlib figure it saves.
"""

from __future__ import annotations

import matplotlib.colors as mcolors
import numpy as np
import pytest

from vqshrink.stages import generator_report, synthetic_report


@pytest.fixture
def saved(monkeypatch):
    """The figures a stage saves, by output path (the PNG is written as well)."""
    figures = {}
    for module in (synthetic_report, generator_report):
        real = module.save_figure

        def capture(fig, path, real=real):
            figures[path] = fig
            real(fig, path)

        monkeypatch.setattr(module, "save_figure", capture)
    return figures


def legend_entries(fig):
    """Legend text -> colour of its handle, over every axes (twin axes included)."""
    out = {}
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        for text, handle in zip(legend.get_texts(), legend.legend_handles):
            face = handle.get_facecolor()
            face = face[0] if np.ndim(face) == 2 else face
            out[text.get_text()] = mcolors.to_hex(face)
    return out


def panels_by_title(fig):
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


C = synthetic_report.COLORS


def test_fig3_names_embeddings_initial_codebook_and_trained_tokens(tmp_path, saved):
    rng = np.random.default_rng(0)
    paths = {}
    for name in ("baseline_init", "deferred_init", "baseline_eval", "deferred_eval"):
        paths[name] = [str(tmp_path / f"{name}.npz")]
        np.savez(paths[name][0], z=rng.normal(size=(400, 1)), codebook=rng.normal(size=(16, 1)))
    fig3, fig6 = str(tmp_path / "fig3.png"), str(tmp_path / "fig6.png")
    synthetic_report.fig3_fig6(**paths, fig3=fig3, fig6=fig6, settings={}, preset="test")
    fig = saved[fig3]
    panels = panels_by_title(fig)
    init = panels["w/o Deferred: k-means init on the untrained encoder"]
    trained_b = panels["w/o Deferred: after VQ training"]
    trained_d = panels["w/ Deferred: after VQ training"]
    for ax in (init, trained_b, trained_d):
        assert ax.get_xlabel() == "latent value (1-D)"
        assert ax.get_ylabel() == "embedding density"
    entries = legend_entries(fig)
    # grey = embeddings, orange = initial codebook, red / teal = trained tokens
    assert entries["encoder embeddings"] == C["data"]
    assert entries["initial codebook (k-means)"] == C["tokens"]
    trained = {mcolors.to_hex(ax.get_legend().legend_handles[-1].get_facecolor())
               for ax in fig.axes if ax.get_legend() is not None
               and ax.get_legend().get_texts()[-1].get_text() == "trained tokens"}
    assert trained == {C["baseline"], C["deferred"]}
    assert sum(ax.get_legend() is not None for ax in fig.axes) == 4  # one per panel
    six = saved[fig6]
    assert all(ax.get_xlabel() == "encoder output (1-D)" and ax.get_ylabel() == "density"
               for ax in six.axes)


def test_fig2_every_panel_has_a_legend_and_axis_labels(tmp_path, saved):
    rng = np.random.default_rng(1)
    dims, token_dims = [2, 3, 8], {"2": 1, "3": 1, "8": 4}
    projections = []
    for dim in dims:
        tdim = 1 if token_dims[str(dim)] == 1 else 2  # projected to 2-D when above 2
        arrays = {"labels": rng.integers(0, 10, 200), "data": rng.normal(size=(200, 2)),
                  "recon_baseline": rng.normal(size=(200, 2)),
                  "recon_deferred": rng.normal(size=(200, 2))}
        for sched in ("baseline", "deferred"):
            arrays[f"z_{sched}"] = rng.normal(size=(200, tdim))
            arrays[f"tokens_{sched}"] = rng.normal(size=(8, tdim))
        projections.append(str(tmp_path / f"p{dim}.npz"))
        np.savez(projections[-1], **arrays)
    figure = str(tmp_path / "fig2.png")
    synthetic_report.fig2(projections=projections, figure=figure,
                          settings={"input_dims": dims, "token_dims": token_dims}, preset="t")
    fig = saved[figure]
    panels = panels_by_title(fig)
    assert len(panels) == 4 * len(dims)
    for title, ax in panels.items():
        assert ax.get_xlabel() and ax.get_ylabel(), title
        legend = ax.get_legend() or next(
            (o.get_legend() for o in fig.axes if o is not ax and o.bbox.bounds == ax.bbox.bounds
             and o.get_legend() is not None), None)
        assert legend is not None, title
    # raw coordinates where the data / latent are 2-D, t-SNE axes above
    assert panels["2-D w/o Deferred: data vs recon"].get_xlabel() == "x1"
    assert panels["8-D w/ Deferred: data vs recon (t-SNE)"].get_xlabel() == "t-SNE 1"
    assert panels["8-D w/ Deferred: tokens vs embeddings"].get_ylabel() == "t-SNE 2"
    assert panels["3-D w/o Deferred: tokens vs embeddings"].get_xlabel() == "latent value (1-D)"
    entries = legend_entries(fig)
    assert entries["data"] == C["data"] and entries["encoder embeddings"] == C["data"]
    assert {"reconstruction", "trained tokens"} <= set(entries)


def test_fig5_groups_panels_as_the_paper(tmp_path, saved):
    """(a) w/o Deferred: ImageNet-100, ODIR; (b) w/ Deferred: ImageNet-100, ODIR."""
    panels, images, labels = [], [], []
    for d in ("imagenet100", "odir"):  # the order of config's generators.fig5 panels
        for s in ("baseline", "deferred"):
            panels.append({"paper_dataset": d, "dataset": "digits", "schedule": s,
                           "run": f"{d}/{s}"})
            images.append(str(tmp_path / f"{d}-{s}-images.npy"))
            labels.append(str(tmp_path / f"{d}-{s}-labels.npy"))
            # a constant image per panel, so the panel shown can be told apart
            value = 10 * len(images)
            np.save(images[-1], np.full((8, 4, 4, 3), value, np.uint8))
            np.save(labels[-1], np.repeat(np.arange(2), 4))
    figure = str(tmp_path / "fig5.png")
    generator_report.fig5(images=images, labels=labels, figure=figure,
                          settings={"panels": panels, "generator": "VAR", "classes": 2,
                                    "per_class": 2}, preset="t")
    fig = saved[figure]
    groups = fig.subfigs
    assert [g.get_suptitle() for g in groups] == ["(a) w/o Deferred", "(b) w/ Deferred"]
    shown = {}
    for group, sched in zip(groups, ("baseline", "deferred")):
        titles = [ax.get_title().split("\n")[0] for ax in group.axes]
        assert titles == ["ImageNet-100", "ODIR"]
        for ax, d in zip(group.axes, ("imagenet100", "odir")):
            assert "(run on digits)" in ax.get_title()
            shown[(d, sched)] = int(ax.get_images()[0].get_array()[0, 0, 0])
    # each panel shows its own run's samples
    assert shown == {("imagenet100", "baseline"): 10, ("imagenet100", "deferred"): 20,
                     ("odir", "baseline"): 30, ("odir", "deferred"): 40}


def test_curves_over_seeds_draw_the_same_figure_twice(tmp_path):
    """Runs of several seeds share a panel, whose band seaborn bootstraps: the same curves
    give the same PNG (a rebuild changes no figure)."""
    import hashlib

    import pandas as pd

    from vqshrink.stages.curves import curves

    rng = np.random.default_rng(0)
    paths = []
    for seed in range(8):
        path = tmp_path / f"curve{seed}.csv"
        pd.DataFrame({"epoch": range(1, 31), "loss": rng.random(30)}).to_csv(path, index=False)
        paths.append(str(path))
    settings = {"title": "t", "metrics": {"loss": "train loss"},
                "runs": [{"name": "8-D", "schedule": "baseline"}] * 8}
    digests = []
    for k in range(2):
        out = tmp_path / f"fig{k}.png"
        curves(curves=paths, figure=str(out), settings=settings, preset="test")
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
