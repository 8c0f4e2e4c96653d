"""The learning benchmark's command line: train the runs the flags ask for, in a process pool with ``--jobs``, into
``--out`` (resuming what a stopped benchmark finished there), or rebuild the report of recorded runs (``--report``)."""

import argparse
import contextlib
import json
import multiprocessing
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import benchmarks.learning
from benchmarks.learning.report import write_report
from benchmarks.learning.runs import RUNS_FILE, Job, finished_job_keys, read_runs, run_job
from benchmarks.learning.variants import POPGYM_TASKS, TASKS, VARIANTS, variants_for

POPGYM_SUITE = "popgym"  # --tasks popgym: the whole suite
# Steps per run that fit a shared 2-core machine (a few minutes per run); the configs' n_timesteps are 1e5 to 1e7
DEFAULT_STEPS = {
    "CartPoleNoVel-v1": 30_000,
    "PendulumNoVel-v1": 40_000,
    "GridMaze9x9-v0": 1_024_000,
    "GridMaze-v0": 48_000,
    "MiniGrid-MemoryS7-v0": 50_000,
    "InvertedPendulum-v5": 20_000,
    # The same budget for every suite task and model: 50k steps of the default entry (n_envs=1, 128-step rollouts) are
    # 391 PPO updates; 3 models x 3 seeds x 6 tasks take about 3.5 hours here, the LSTM runs 3x longer than the STPN's
    **dict.fromkeys(POPGYM_TASKS, 50_000),
}
# One rollout of each config: a smaller budget would still train one whole rollout (StpnPPO/RecurrentPPO round up),
# but the evaluations, spaced by the budget, would then come many times a rollout
QUICK_STEPS = {"CartPoleNoVel-v1": 256, "PendulumNoVel-v1": 4096, "MiniGrid-MemoryS7-v0": 1024}
QUICK_STEPS.update(dict.fromkeys(("GridMaze-v0", "GridMaze9x9-v0"), 64 * 200))
QUICK_STEPS["InvertedPendulum-v5"] = 64
QUICK_STEPS.update(dict.fromkeys(POPGYM_TASKS, 128))
DEFAULT_OUT = Path("benchmarks/results/learning")


def expand_tasks(names: Sequence[str]) -> list[str]:
    """``--tasks``: the names given, ``popgym`` standing for the six POPGym tasks, each task once."""
    return list(dict.fromkeys(task for name in names for task in (POPGYM_TASKS if name == POPGYM_SUITE else [name])))


def parse_steps(values: list[str] | None, tasks: list[str], defaults: dict[str, int]) -> dict[str, int]:
    """``--steps``: one number for every task, or ``TASK=N`` pairs (other tasks keep their default)."""
    steps = {task: defaults[task] for task in tasks}
    for value in values or []:
        task, _, number = value.rpartition("=")
        if task and task not in steps:
            raise SystemExit(f"--steps names {task}, which is not in --tasks {' '.join(tasks)}")
        steps.update({task: int(number)} if task else dict.fromkeys(tasks, int(number)))
    return steps


def parse_changes(values: list[str] | None) -> dict[str, Any]:
    """``--stpn-hyperparams`` or ``--lstm-hyperparams``: ``KEY=VALUE`` pairs with Python values, read by rl_zoo3's
    parser of train.py's ``--hyperparams KEY:VALUE``, so that a value means here what it means there."""
    from rl_zoo3.utils import StoreDict

    pairs = []
    for value in values or []:
        key, separator, text = value.partition("=")
        if not separator:
            raise SystemExit(f"--stpn-hyperparams and --lstm-hyperparams take KEY=VALUE, got {value!r}")
        pairs.append(f"{key}:{text}")
    parsed = argparse.Namespace()
    StoreDict(option_strings=[], dest="changes")(parser=None, namespace=parsed, values=pairs)  # it reads no parser
    return parsed.changes


def main(argv: list[str] | None = None) -> None:
    overview = benchmarks.learning.__doc__ or ""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.learning", description=overview.split("\n\n")[1])
    parser.add_argument(
        "--tasks", nargs="+", choices=(*TASKS, *POPGYM_TASKS, POPGYM_SUITE), default=None,
        help=f"tasks (default: the project's six); {POPGYM_SUITE} stands for the six POPGym tasks",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, default=None, help="seeds per model (default 3, --quick 1)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    parser.add_argument("--steps", nargs="+", default=None, help="steps per run: N for all tasks or TASK=N pairs")
    parser.add_argument("--models", nargs="+", choices=list(VARIANTS), default=None, help="models (default: all of a task's)")
    parser.add_argument(
        "--stpn-hyperparams",
        nargs="+",
        default=None,
        metavar="KEY=VALUE",
        help="changes to the STPN's zoo entry for tuning experiments, values in Python, as train.py's --hyperparams: "
        "policy_kwargs and their stpn_kwargs merged into the entry's, other keys replaced "
        "(e.g. learning_rate=3e-4 'policy_kwargs=dict(stpn_kwargs=dict(clamp=1.0))'); the STPN rows name them",
    )
    parser.add_argument(
        "--lstm-hyperparams",
        nargs="+",
        default=None,
        metavar="KEY=VALUE",
        help="changes to the LSTM's zoo entry (both LSTM rows), as --stpn-hyperparams; the LSTM rows name them",
    )
    parser.add_argument(
        "--plasticity-warmup", type=int, default=0, metavar="UPDATES",
        help="an ablation: freeze the STPN rows' lambda and gamma for the first UPDATES PPO updates",
    )  # fmt: skip
    parser.add_argument("--evals", type=int, default=10, help="evaluations per run after the one at step 0")
    parser.add_argument("--eval-episodes", type=int, default=None, help="episodes per evaluation (default 5, --quick 1)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (1 torch thread each)")
    parser.add_argument("--quick", action="store_true", help="one seed, one rollout per run: checks the script works")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT,
        help=f"folder for {RUNS_FILE} (each run as it ends), learning.md/json, PNGs; a folder that already holds runs "
        "resumes: those runs are kept and not trained again (use a new folder for a new budget)",
    )  # fmt: skip
    parser.add_argument(
        "--report", nargs="+", type=Path, default=None, metavar="FOLDER",
        help=f"train nothing: rebuild the table and plots in --out from the {RUNS_FILE} of these folders (merged)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    settings: dict[str, Any] = {"argv": sys.argv[1:] if argv is None else argv}
    if args.report:
        write_report(read_runs(args.report), args.out, f"Runs of {', '.join(map(str, args.report))}", settings)
        return

    from sb3_stpn.zoo import Interrupted, raising_interrupted

    tasks = expand_tasks(args.tasks or TASKS)
    seeds = args.seeds or (1 if args.quick else 3)
    n_episodes = args.eval_episodes or (1 if args.quick else 5)
    n_evals = 2 if args.quick else args.evals
    steps = parse_steps(args.steps, tasks, QUICK_STEPS if args.quick else DEFAULT_STEPS)
    changes = {"ppo_stpn": parse_changes(args.stpn_hyperparams), "ppo_lstm": parse_changes(args.lstm_hyperparams)}
    jobs = [
        Job(task, variant.key, seed, steps[task], n_evals, n_episodes, changes.get(variant.algo, {}), args.plasticity_warmup)
        for task in tasks
        for seed in range(args.first_seed, args.first_seed + seeds)
        for variant in variants_for(task)
        if args.models is None or variant.key in args.models
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    # Resume: the runs a stopped benchmark finished into this --out are kept, not trained again
    finished = finished_job_keys(args.out / RUNS_FILE)
    todo = [job for job in jobs if job.key not in finished]
    if len(todo) < len(jobs):
        print(f"resuming: {len(jobs) - len(todo)} of the {len(jobs)} runs are already in {args.out / RUNS_FILE}", flush=True)
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    try:
        # On SIGINT or SIGTERM the pool's exit terminates its workers: none goes on training for a dead parent
        with (
            raising_interrupted(),
            multiprocessing.get_context("spawn").Pool(args.jobs) if args.jobs > 1 else contextlib.nullcontext() as pool,
            (args.out / RUNS_FILE).open("a") as runs_file,
        ):
            # Printed and saved as each run (in order) finishes, so that a long benchmark shows its progress
            # and a stopped one keeps what it finished (--report rebuilds the table from it)
            for run in pool.imap(run_job, todo) if pool else map(run_job, todo):
                final = run["curve"][-1]
                print(
                    f"{run['task']} {run['model']} seed {run['seed']}: return {final['return_sampled']:.1f} sampled, "
                    f"{final['return']:.1f} deterministic, {run['wall_seconds']:.0f} s",
                    flush=True,
                )
                runs_file.write(json.dumps(run) + "\n")
                runs_file.flush()
                runs.append(run)
    except Interrupted as stop:
        print(
            f"stopped by {stop}: the {len(runs)} runs that finished are in {args.out / RUNS_FILE} "
            f"(--report {args.out} rebuilds their table)",
            file=sys.stderr,
        )
        raise SystemExit(128 + stop.signum) from None
    total = time.perf_counter() - start
    header = f"StpnPPO vs RecurrentPPO, zoo configs, {seeds} seed(s), {args.jobs} job(s), {total:.0f} s in all"
    settings.update(seeds=seeds, eval_episodes=n_episodes, steps=steps, total_seconds=total)
    write_report(read_runs([args.out]), args.out, header, settings)


if __name__ == "__main__":
    main()
