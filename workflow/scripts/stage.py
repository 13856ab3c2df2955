"""Entry point of every stage rule: hand the rule's files and settings to its stage.

Named inputs and outputs become the stage's keyword arguments, with the params
``settings``/``preset``/``state_dir`` and the rule's log. How it runs (in-process or as a
SLURM job through submitit) is the rule's ``launcher`` resource or config["launcher"]
(vqshrink.launch.launch_from_snakemake), not a param, so that switching launchers does not
rerun finished stages. The stage goes by name: this process imports neither torch nor the
stage's module, which only the process running it does (here, or in the SLURM job).
"""

import sys

from vqshrink.errors import PlainError  # no torch: safe on the waiting side
from vqshrink.launch import launch_from_snakemake

sm = snakemake  # noqa: F821 (injected by Snakemake)

params = dict(sm.params.items())
kwargs = {**dict(sm.input.items()), **dict(sm.output.items())}
kwargs.update({k: params[k] for k in ("settings", "preset", "state_dir") if k in params})
if "state_dir" in kwargs:
    kwargs["checkpoint_interval_s"] = sm.config["training"]["checkpoint_interval_s"]
if params.get("weights"):  # where pretrained metric weights live (moving it reruns nothing)
    kwargs["weights_dir"] = sm.config["metrics"]["weights_dir"]
kwargs["log"] = sm.log[0]
kwargs["threads"] = sm.threads
try:
    launch_from_snakemake(sm, params["stage"], kwargs)
except PlainError as err:  # its message (logged in full) says what to do: no traceback
    sys.exit(f"stage {params['stage']} failed: {str(err).splitlines()[0]}\n"
             f"(the whole message is above and in {sm.log[0]})")
