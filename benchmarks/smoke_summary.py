"""Summarise Snakemake's benchmark files of a build (results/benchmarks/<rule>/<job>.tsv):
per stage kind (rule) the jobs, total and slowest wall time and peak RSS; then the slowest
jobs. Used for benchmarks/README.md, "Smoke build".

    python benchmarks/smoke_summary.py [results/benchmarks] [--slowest 10] [--since ISO-TIME]
                                       [--only LIST]

``--since`` keeps the files written after a time (the build's start; older ones are stale).
``--only`` keeps the jobs whose benchmark paths a file lists, one per line: a subset of the
build, e.g. the CI smoke targets' jobs, listed by a forced dry run:

    snakemake -n --forceall --nolock <targets> --config preset=smoke | grep benchmark: \
        | awk '{print $2}' > subset.txt
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

import pandas as pd


def read_benchmarks(root: Path, since: float = 0.0,
                    only: set[tuple[str, str]] | None = None) -> pd.DataFrame:
    rows = []
    for path in sorted(root.glob("*/*.tsv")):
        if path.stat().st_mtime < since or (only is not None
                                             and (path.parent.name, path.name) not in only):
            continue
        frame = pd.read_csv(path, sep="\t")
        last = frame.iloc[-1]   # one line per repeat; Snakemake runs one
        rows.append({"rule": path.parent.name, "job": path.stem, "s": float(last["s"]),
                     "max_rss_mb": float(last["max_rss"])})
    if not rows:
        raise SystemExit(f"no benchmark files under {root}/<rule>/*.tsv")
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default="results/benchmarks", type=Path)
    ap.add_argument("--slowest", type=int, default=10)
    ap.add_argument("--since", default=None, help="ISO time, e.g. 2026-12-01T01:56:00+00:00")
    ap.add_argument("--only", type=Path, default=None,
                    help="a file listing the benchmark paths to keep, one per line")
    args = ap.parse_args()
    since = datetime.fromisoformat(args.since).timestamp() if args.since else 0.0
    only = None
    if args.only is not None:   # (rule, file name): the list's paths may be relative
        only = {(Path(line).parent.name, Path(line).name)
                for line in args.only.read_text().split()}
    jobs = read_benchmarks(args.root, since, only)
    kinds = jobs.groupby("rule").agg(jobs=("job", "size"), total_s=("s", "sum"),
                                     max_s=("s", "max"), peak_rss_mb=("max_rss_mb", "max"))
    kinds = kinds.sort_values("total_s", ascending=False)
    print(kinds.round(1).to_markdown())
    print(f"\n{len(jobs)} jobs, {jobs['s'].sum() / 60:.1f} job-minutes\n")
    print(jobs.sort_values("s", ascending=False).head(args.slowest)[
        ["rule", "job", "s", "max_rss_mb"]].round(1).to_markdown(index=False))


if __name__ == "__main__":
    main()
