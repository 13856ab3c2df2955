"""The Snakemake workflow itself: lint, format, dry runs, bad input, the demo end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from repo_helpers import ROOT, copy_repo, fake_sources, planned_jobs, snakemake
COPY = ["Snakefile", "config.yaml", "workflow", "src", "envs", "slurm"]
TARGETS = [
    "results/tables/synthetic.csv",
    "results/tables/synthetic_claims.csv",
    "results/tables/embeddings_collapse.csv",
    "results/figures/fig2.png",
    "results/figures/fig3.png",
    "results/figures/fig6.png",
    "results/figures/embeddings_collapse.png",
    # ---- image tokenizers
    "results/tables/table2.csv",
    "results/tables/table3.csv",
    "results/tables/table5.csv",
    "results/tables/table9.csv",
    "results/tables/table10.csv",
    "results/tables/fig4.csv",
    "results/figures/fig4.png",
]
# ---- generators: dry-run together, one call per preset (they share one DAG)
GEN_TARGETS = [
    *(f"results/tables/table{n}.csv" for n in (4, 6, 7, 8, 11, 12)),
    "results/figures/fig5.png",
]
CURVES = ["synthetic-gaussians", "tokenizers-digits", "sweep-digits", "generators-digits"]


def test_planning_the_dag_does_not_load_torch(tmp_path):
    """Parse and DAG of every target (the demo, whose metric weights are looked up in torch's
    hub directory) in one process that never imports torch: fast on a login node, and the
    ~40 Snakemake calls of the tests do not pay for it either."""
    repo = copy_repo(tmp_path)
    code = ("import sys\nfrom snakemake.cli import main\n"
            "try:\n    main(['-n', '-q', '--config', 'preset=demo'])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_rule_names_its_stage_function_by_dotted_path():
    """One hop from a rule to its code: `stage_params("vqshrink.stages.<module>.<function>")`
    is the file and the function, and it is a stage (the @stage frame)."""
    from vqshrink.launch import resolve_stage

    rules = stages = 0
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        rules += len(re.findall(r"^rule \w+:", text, re.M))
        for name in re.findall(r'stage_params\("([\w.]+)"\)', text):
            module, _, function = name.rpartition(".")
            path = ROOT / "src" / (module.replace(".", "/") + ".py")
            assert path.is_file(), f"{smk.name}: {name}: no file {path}"
            assert re.search(rf"^def {function}\(", path.read_text(), re.M), name
            fn = resolve_stage(name)
            assert fn.__module__ == module and hasattr(fn, "__wrapped__"), name
            stages += 1
    assert stages == rules == 30



def test_lint_is_clean():
    proc = snakemake("--lint")
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_snakefmt_check():
    files = ["Snakefile", *map(str, sorted((ROOT / "workflow" / "rules").glob("*.smk")))]
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *files], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("preset", ["paper", "demo"])
@pytest.mark.parametrize("target", TARGETS)
def test_every_target_dry_runs(target, preset, tmp_path):
    repo = copy_repo(tmp_path)
    fake = ["--configfile", "config.yaml", str(fake_sources(tmp_path / "fake"))]
    proc = snakemake("-n", target, "--config", f"preset={preset}",
                     *(fake if preset == "paper" else []), cwd=repo)
    assert re.search(r"\b(synthetic_data|prepare_dataset)\b", proc.stdout)


@pytest.mark.parametrize("preset", ["paper", "demo"])
def test_generation_targets_dry_run(preset, tmp_path):
    repo = copy_repo(tmp_path)
    fake = ["--configfile", "config.yaml", str(fake_sources(tmp_path / "fake"))]
    proc = snakemake("-n", *GEN_TARGETS, "--config", f"preset={preset}",
                     *(fake if preset == "paper" else []), cwd=repo)
    jobs = planned_jobs(proc.stdout)
    runs = 2 * 9 if preset == "paper" else 2 * 5  # (generator, tokenizer) pairs x schedules
    assert jobs["generator_train"] == jobs["generator_eval"] == runs
    assert jobs["generator_table"] == 6 and jobs["fig5"] == 1


def test_slurm_profile_dry_run_uses_the_slurm_launcher(tmp_path):
    repo = copy_repo(tmp_path)
    proc = snakemake("-n", "--profile", "slurm", "results/tables/synthetic.csv", cwd=repo)
    assert "synthetic_train_vq" in proc.stdout and "launcher=slurm" in proc.stdout
    # the profile's launcher is a default resource: --config does not drop it
    proc = snakemake("-n", "--profile", "slurm", "--printshellcmds",
                     "results/tables/synthetic.csv", "--config", "preset=demo", cwd=repo)
    assert proc.returncode == 0 and "launcher=slurm" in proc.stdout


def test_env_files_parse_and_name_every_runtime_dependency():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~\[ ]", d, 1)[0].lower() for d in deps}
    for env_file in (ROOT / "envs").glob("*.yaml"):
        env = yaml.safe_load(env_file.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
        listed = {re.split(r"[<>=!~\[ ]", d, 1)[0].lower() for d in pip}
        assert names <= listed, f"{env_file.name} misses {sorted(names - listed)}"


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"synthetic": {"epochs": {"baseline": -3}}}, "synthetic.epochs.baseline"),
        ({"synthetic": {"seeds": []}}, "synthetic.seeds"),
        ({"synthetic": {"colour": 1}}, "unknown config key synthetic.colour"),
        ({"synthetic": {"batch_size": "big"}}, "synthetic.batch_size"),
    ],
)
def test_bad_config_stops_before_any_job(bad, message, tmp_path):
    repo = copy_repo(tmp_path)
    (repo / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = snakemake("-c1", "--configfile", "config.yaml", "bad.yaml", cwd=repo, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not (repo / "results").exists()


def _make_unwritable(results: Path, how: str) -> None:
    if how == "file":
        results.write_text("not a directory")
        return
    results.mkdir()
    if subprocess.run(["chattr", "+i", str(results)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported on this file system")


@pytest.mark.parametrize("how", ["file", "immutable"])
def test_unwritable_results_directory_is_a_clear_error(how, tmp_path):
    repo = copy_repo(tmp_path)
    results = repo / "results"
    _make_unwritable(results, how)
    try:
        proc = snakemake("-c1", "results/tables/synthetic.csv", cwd=repo, check=False)
    finally:
        subprocess.run(["chattr", "-i", str(results)], capture_output=True)
    assert proc.returncode != 0
    assert "results directory" in proc.stdout + proc.stderr
    assert "not writable" in proc.stdout + proc.stderr


@pytest.mark.parametrize("where", ["results/state", "results/state/synthetic/dim2"])
def test_unwritable_state_directory_stops_before_any_job(where, tmp_path):
    """Training state is written while a stage trains: a read-only state directory must stop
    the run before any job, not at a stage's first save."""
    repo = copy_repo(tmp_path)
    target = repo / where
    target.parent.mkdir(parents=True)
    _make_unwritable(target, "immutable")
    try:
        proc = snakemake("-c1", "results/tables/synthetic.csv", cwd=repo, check=False)
    finally:
        subprocess.run(["chattr", "-i", str(target)], capture_output=True)
    assert proc.returncode != 0
    assert f"results directory {target.resolve()} is not writable" in proc.stdout + proc.stderr
    assert not (repo / "results" / "synthetic").exists()  # no job ran


# ---------------------------------------------------------------- the demo, end to end
@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("demo"))
    proc = snakemake("-c2", "--config", "preset=demo", cwd=repo)
    return repo, proc


@pytest.mark.workflow
def test_demo_builds_every_target(demo_run):
    repo, _ = demo_run
    for target in TARGETS:
        path = repo / target
        assert path.exists() and path.stat().st_size > 0, target
    for target in GEN_TARGETS:
        assert (repo / target).stat().st_size > 0, target
    for name in CURVES:
        assert (repo / f"results/figures/curves/{name}.png").exists(), name
    for figure in (repo / "results" / "figures").rglob("*.png"):
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.workflow
def test_demo_generation_tables_label_every_substitute(demo_run):
    repo, _ = demo_run
    for target in GEN_TARGETS[:-1]:
        table = pd.read_csv(repo / target)
        assert set(table["preset"]) == {"demo"} and set(table["dataset"]) == {"digits"}
        assert table["fid_feature_net"].str.contains("not comparable").all()
        assert table["lpips_backbone"].str.contains("RANDOM").all()
        assert list(table["deferred"]) == ["yes", "no"] * (len(table) // 2)
        assert table["gfid"].gt(0).all() and table["lpips_diversity"].gt(0).all()
    assert pd.read_csv(repo / "results/tables/table4.csv")["paper_gfid"].notna().all()
    assert pd.read_csv(repo / "results/tables/table12.csv")["paper_gfid"].isna().all()
    t11 = pd.read_csv(repo / "results/tables/table11.csv")
    assert {"rfid", "perplexity", "euclidean", "gfid"} <= set(t11.columns)
    assert list(t11["gan"]) == ["no", "no", "yes", "yes"]


@pytest.mark.workflow
def test_report_has_every_table_and_figure(demo_run):
    """`snakemake --report`: one self-contained HTML with every table and figure, captioned."""
    import zipfile

    repo, _ = demo_run
    snakemake("--report", "report.zip", "--config", "preset=demo", cwd=repo)
    names = zipfile.ZipFile(repo / "report.zip").namelist()
    wanted = [*TARGETS, *GEN_TARGETS, *(f"results/figures/curves/{c}.png" for c in CURVES),
              "results/tables/claims.csv"]
    for target in wanted:
        assert any(n.endswith("/" + Path(target).name) for n in names), target


@pytest.mark.workflow
def test_demo_tables_record_preset_and_every_run(demo_run):
    repo, _ = demo_run
    cfg = yaml.safe_load((repo / "config.yaml").read_text())["synthetic"]
    table = pd.read_csv(repo / "results/tables/synthetic.csv", dtype={"seed": str})
    assert set(table["preset"]) == {"demo"}
    per_seed = table[~table["seed"].isin(["mean", "std"])]
    assert len(per_seed) == len(cfg["input_dims"]) * 2 * len(cfg["seeds"])
    assert len(table[table["seed"] == "mean"]) == len(cfg["input_dims"]) * 2
    assert per_seed["perplexity"].between(1, cfg["codebook_size"]).all()
    assert per_seed["modes_covered"].between(0, cfg["n_clusters"]).all()
    claims = pd.read_csv(repo / "results/tables/synthetic_claims.csv")
    assert set(claims["input_dim"]) == set(cfg["input_dims"])
    assert set(claims["verdict"]) <= {"reproduced", "within noise", "opposite"}
    image = pd.read_csv(repo / "results/tables/claims.csv", dtype={"table": str})
    assert set(image["table"]) == {"2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"}
    assert set(image["verdict"]) <= {"single run", "no paper value", "no run value"}
    assert set(image.loc[image["table"] == "12", "verdict"]) == {"no paper value"}


@pytest.mark.workflow
def test_changed_setting_reruns_only_its_stage_and_downstream(demo_run, tmp_path):
    repo, _ = demo_run
    assert "Nothing to be done" in snakemake("-n", "--config", "preset=demo", cwd=repo).stdout
    (repo / "change.yaml").write_text(yaml.safe_dump({"synthetic": {"kmeans_iters": 7}}))
    proc = snakemake("-n", "--config", "preset=demo", "--configfile", "config.yaml",
                     "change.yaml", cwd=repo)
    jobs = planned_jobs(proc.stdout)
    assert jobs.get("synthetic_init_codebook", 0) > 0 and jobs.get("synthetic_train_vq", 0) > 0
    assert "synthetic_data" not in jobs and "synthetic_pretrain_ae" not in jobs
