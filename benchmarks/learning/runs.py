"""
One learning-benchmark run: the job that says what to train, its training, and its record in ``runs.jsonl``, where a
benchmark run again into the same folder finds what it already finished.
"""

import argparse
import contextlib
import gzip
import io
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.learning.callbacks import make_curve_callback, make_diagnostics_callback, make_plasticity_warmup_callback
from benchmarks.learning.variants import VARIANTS, variant_entry

RUNS_FILE = "runs.jsonl"


@dataclass(frozen=True)
class Job:
    """One run to train: a model of the comparison on a task with one seed, its budget and its evaluations."""

    task: str
    model: str  # a key of VARIANTS
    seed: int
    steps: int
    n_evals: int  # evaluations after the one at step 0
    n_episodes: int  # episodes per evaluation
    changes: dict[str, Any]  # --stpn-hyperparams or --lstm-hyperparams, for the model's config
    plasticity_warmup: int = 0  # --plasticity-warmup (STPN rows only)

    @property
    def key(self) -> str:
        """:func:`job_key` of the run this job records (which keeps a warmup for the STPN rows only)."""
        warmup = self.plasticity_warmup if VARIANTS[self.model].algo == "ppo_stpn" else 0
        return job_key(self.task, self.model, self.seed, self.changes, warmup)


def run_job(job: Job) -> dict[str, Any]:
    """:func:`run_one` on one job (what ``Pool.imap`` passes)."""
    return run_one(job.task, job.model, job.seed, job.steps, job.n_evals, job.n_episodes, job.changes, job.plasticity_warmup)


def run_one(
    task: str,
    variant_key: str,
    seed: int,
    steps: int,
    n_evals: int,
    n_episodes: int,
    changes: dict[str, Any],
    plasticity_warmup: int = 0,
) -> dict[str, Any]:
    """Train one (task, model, seed) from the zoo configs with periodic evaluation; return its curve and costs."""
    import torch as th
    import yaml

    from sb3_stpn.zoo import StpnExperimentManager

    th.set_num_threads(1)
    variant = VARIANTS[variant_key]
    entry = variant_entry(variant, task, steps, changes)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as log_folder, contextlib.redirect_stdout(io.StringIO()):
        config = Path(log_folder) / "config.yml"
        # The entry without policy_kwargs (YAML cannot hold nn classes): they go in as an override, as a dict
        config.write_text(yaml.safe_dump({task: {k: v for k, v in entry.items() if k != "policy_kwargs"}}))
        manager = StpnExperimentManager(
            argparse.Namespace(),
            variant.algo,
            task,
            log_folder,
            hyperparams={"policy_kwargs": entry["policy_kwargs"]},
            n_timesteps=steps,
            eval_freq=-1,
            config=str(config),
            verbose=0,
            seed=seed,
            log_interval=-1,
        )
        model, _ = manager.setup_experiment()
        eval_env = manager.create_envs(1, eval_env=True)
        callback = make_curve_callback(eval_env, n_evals, n_episodes, steps)
        # First: the diagnostics read the actor's last forward, which must be the rollout's, not an evaluation's
        diagnostics = make_diagnostics_callback() if variant.algo == "ppo_stpn" else None
        warmup = (
            make_plasticity_warmup_callback(plasticity_warmup) if plasticity_warmup and variant.algo == "ppo_stpn" else None
        )
        model.learn(steps, callback=[c for c in (diagnostics, warmup, callback) if c is not None])
        eval_env.close()
        model.get_env().close()
    policy_kwargs = entry["policy_kwargs"]
    hidden = None if variant.mlp else policy_kwargs.get("lstm_hidden_size", policy_kwargs.get("stpn_hidden_size"))
    return {
        "task": task,
        "model": variant_key,
        "seed": seed,
        "hidden_size": hidden,
        "changes": changes,
        "plasticity_warmup": plasticity_warmup if variant.algo == "ppo_stpn" else 0,
        "parameters": sum(p.numel() for p in model.policy.parameters() if p.requires_grad),
        "steps": model.num_timesteps,
        "wall_seconds": time.perf_counter() - start,
        "eval_episodes": n_episodes,
        "curve": callback.curve,
        "diagnostics": diagnostics.records if diagnostics else None,
    }


def job_key(task: str, model: str, seed: int, changes: dict[str, Any], plasticity_warmup: int) -> str:
    """What makes a run the same run again: the job's fields that ``run_one`` records (its budget aside)."""
    return json.dumps([task, model, seed, changes, plasticity_warmup], sort_keys=True, default=repr)


def finished_job_keys(runs_path: Path) -> set[str]:
    """The job keys of the runs already in ``runs_path`` (none if it does not exist), for a benchmark resumed."""
    if not runs_path.is_file():
        return set()
    runs = [json.loads(line) for line in runs_path.read_text().splitlines() if line.strip()]
    return {job_key(run["task"], run["model"], run["seed"], run["changes"], run.get("plasticity_warmup", 0)) for run in runs}


def read_runs(folders: Sequence[Path]) -> list[dict[str, Any]]:
    """The runs recorded in ``runs.jsonl`` of each folder, in order; ``runs.jsonl.gz`` where a folder holds that
    instead (how the results committed under ``docs/`` keep their runs)."""
    runs = []
    for folder in folders:
        path, compressed = folder / RUNS_FILE, folder / f"{RUNS_FILE}.gz"
        if path.is_file():
            text = path.read_text()
        elif compressed.is_file():
            text = gzip.decompress(compressed.read_bytes()).decode()
        else:
            raise SystemExit(f"--report: {path} not found; pass folders that a benchmark run wrote (its --out)")
        runs += [json.loads(line) for line in text.splitlines() if line.strip()]
    return runs
