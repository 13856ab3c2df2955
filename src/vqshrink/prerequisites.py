"""What a run needs from the user before any job: dataset paths and pretrained metric weights.

The workflow stops at the first job whose dataset path is null or whose weights are absent,
but the message lists EVERYTHING the configured experiments still lack (every null dataset
key, with the targets that read it, and every missing weight file with its URL, its target
path and the one command that fetches them all), so a user fixes it in one go rather than
one run per item.

The stop is :class:`PrerequisitesMissing`, a ``SystemExit``: Snakemake wraps ordinary
exceptions raised in input functions into an ``InputFunctionException`` with a traceback,
while a ``SystemExit`` passes through and prints its message alone, exit status 1. It is
raised while the DAG is built, so no job has started and nothing has been written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vqshrink import weights as vqweights

FETCH_COMMAND = "snakemake -c1 fetch_weights"


class PrerequisitesMissing(SystemExit):
    """Stops Snakemake with a plain message (no traceback), exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class MissingKey:
    """A null config key: ``key`` (dotted), what to set it to, which targets read it."""

    key: str
    what: str
    needed_by: tuple[str, ...] = ()

    def describe(self) -> str:
        line = (f"  - config key {self.key} is null: set it (in config.yaml or a file given "
                f"with --configfile) to {self.what}")
        if self.needed_by:
            line += "\n      needed by: " + ", ".join(self.needed_by)
        return line


def missing_dataset_keys(datasets: Mapping, sources: Mapping[str, Mapping[str, str]],
                         needed_by: Mapping[str, Sequence[str]]) -> list[MissingKey]:
    """Null source keys (``sources``: dataset -> key -> what it holds) of the datasets in
    ``needed_by`` (dataset -> targets reading it), in that order."""
    return [MissingKey(f"datasets.{name}.{key}", what, tuple(targets))
            for name, targets in needed_by.items()
            for key, what in sources.get(name, {}).items()
            if datasets[name][key] is None]


def missing_weight_files(fid: bool, lpips_nets: Sequence[str],
                         cache_dir) -> list[vqweights.WeightFile]:
    """Every weight file the configured metrics and losses load and that is not on disk."""
    found: dict = {}
    nets = list(lpips_nets) or [None]
    for i, net in enumerate(nets):
        for w in vqweights.missing_weights(fid and i == 0, net, cache_dir):
            found.setdefault(w.path, w)
    return list(found.values())


def message(reason: str, keys: Sequence[MissingKey],
            files: Sequence[vqweights.WeightFile], cache_dir, preset: str) -> str:
    """The one message: why this run stops, then everything still missing."""
    lines = [f"Cannot start: {reason}. Nothing was run or written.",
             f"Everything the configured experiments (preset {preset}) still lack:"]
    if keys:
        lines.append("Dataset paths:")
        lines += [k.describe() for k in keys]
    if files:
        lines.append(str(vqweights.MissingWeightsError(files, cache_dir)))
        lines.append(f"The one command that fetches them all: `{FETCH_COMMAND}` on a machine "
                     "with internet (e.g. a login node), with the same --configfile/--config "
                     "options as this run, into metrics.weights_dir.")
    return "\n".join(lines)
