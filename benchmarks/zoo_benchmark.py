"""
Train zoo entries to their own budget (``n_timesteps``) and evaluate the final agents as rl_zoo3's benchmark does.

Each run (algo, env, seed) trains through ``train.py`` itself, so with the project's entries exactly as a user gets
them, in segments: a segment stopped by ``--stop-after`` (or killed) is resumed by the next invocation of the same
command from its saved model, or from its last checkpoint (``--save-freq``) if it died without saving, with ``-i``
and the VecNormalize statistics saved beside that model. What resuming loses: the rollout in flight (the steps since
the last update are not counted), the envs' episodes in progress (they restart), and the learning-rate and clip-range
schedules (``lin_*``), which restart from their initial value over the remaining steps; the optimiser's state and the
step count carry over. Once a run has its budget, its final model is replayed with ``enjoy.py`` as
``python -m rl_zoo3.benchmark`` does (``-n 150000`` steps, one env, ``--seed 0`` for every model; deterministic
actions except on Atari and MiniGrid, where rl_zoo3's enjoy samples them) and the episode returns are read from the
replay's Monitor log.

Usage::

    python -m benchmarks.zoo_benchmark --envs CartPoleNoVel-v1 --algos ppo_stpn ppo_lstm --seeds 0 1 2 \
        --jobs 2 [--stop-after 170] [--n-timesteps N]
    python -m benchmarks.zoo_benchmark --report results/zoo_benchmark --agents rl-trained-agents

``--n-timesteps`` trains a bounded run instead of the entry's budget (the table says so). Progress lives in
``<out>/<algo>/<env>/seed<k>/progress.json`` (``--out``: ``results/zoo_benchmark``), beside the segments' rl_zoo3
run folders, whose models and logs git ignores; the rest (Monitor logs, evaluations, configs) is the record that
the report reads. ``--agents`` exports each row's best final agent, replayable with
``python enjoy.py --algo <algo> --env <env> -f rl-trained-agents``.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
# rl_zoo3.benchmark's replay: steps, envs, seed
EVAL_STEPS = 150_000
EVAL_SEED = 0
# Training episodes per point of the sampled learning curve (a moving mean)
EPISODE_WINDOW = 50
# Seconds left before --stop-after when a segment is asked to stop (its final save needs a moment)
STOP_MARGIN_S = 60
# Rows that are not rl_zoo3 algorithms: the name, the algorithm it trains, and the --hyperparams it adds to the entry
# (the STPN's plasticity-free twin: what the plasticity adds or costs at the entry's own budget)
VARIANTS = {"ppo_stpn_twin": ("ppo_stpn", "policy_kwargs:dict(stpn_kwargs=dict(plastic=False, plastic_bias=False))")}


def zoo_algo(row: str) -> str:
    """The rl_zoo3 algorithm a row trains (``ppo_stpn`` for its twin)."""
    return VARIANTS[row][0] if row in VARIANTS else row


@dataclass
class Segment:
    """One train.py invocation of a run: where it wrote, how many steps its saved model holds, how long it took."""

    folder: str
    steps: int = 0
    wall_s: float = 0.0
    finished: bool = False


@dataclass
class Progress:
    """A run's state on disk: its budget, its segments, and the replay of its final agent once it has one."""

    algo: str
    env: str
    seed: int
    budget: int | None = None
    bounded: bool = False
    segments: list[Segment] = field(default_factory=list)
    returns: list[float] | None = None
    lengths: list[int] | None = None

    @property
    def steps(self) -> int:
        return sum(segment.steps for segment in self.segments)

    @property
    def wall_s(self) -> float:
        return sum(segment.wall_s for segment in self.segments)

    @classmethod
    def read(cls, path: Path) -> "Progress":
        data = json.loads(path.read_text())
        return cls(**{**data, "segments": [Segment(**segment) for segment in data["segments"]]})

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))


def run_folder(segment: Segment, algo: str, env: str) -> Path:
    """rl_zoo3's run folder inside a segment's ``-f`` folder (each segment trains one run, so its id is 1)."""
    return Path(segment.folder, zoo_algo(algo), f"{env}_1")


def saved_steps(model_zip: Path) -> int:
    """The step count SB3 stored in a saved model."""
    with zipfile.ZipFile(model_zip) as archive:
        return int(json.loads(archive.read("data"))["num_timesteps"])


def latest_model(run: Path, env: str) -> Path | None:
    """The run's final model if it saved one (at the end or when stopped), else its latest checkpoint, else None."""
    final = run / f"{env}.zip"
    if final.is_file():
        return final
    checkpoints = sorted(run.glob("rl_model_*_steps.zip"), key=lambda path: int(path.stem.split("_")[2]))
    return checkpoints[-1] if checkpoints else None


def entry_budget(run: Path, env: str) -> int:
    """``n_timesteps`` of the entry the run trained with, from the ``config.yml`` rl_zoo3 saved."""
    with (run / env / "config.yml").open() as file:
        config = dict(yaml.load(file, Loader=yaml.UnsafeLoader))
    return int(config["n_timesteps"])


class Runner:
    """Trains runs segment by segment until their budget or the deadline, then replays each finished one."""

    def __init__(self, out: Path, save_freq: int, deadline: float | None, eval_steps: int, n_timesteps: int | None):
        self.out = out
        self.save_freq = save_freq
        self.deadline = deadline
        self.eval_steps = eval_steps
        self.n_timesteps = n_timesteps
        self.stopping = threading.Event()

    def progress_path(self, algo: str, env: str, seed: int) -> Path:
        return self.out / algo / env / f"seed{seed}" / "progress.json"

    def run(self, algo: str, env: str, seed: int) -> str:
        """Advance one run as far as the deadline allows; return a one-line summary."""
        path = self.progress_path(algo, env, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        progress = Progress.read(path) if path.is_file() else Progress(algo, env, seed, bounded=self.n_timesteps is not None)
        while progress.budget is None or progress.steps < progress.budget:
            if self.stopping.is_set():
                return f"{algo} {env} seed {seed}: stopped at {progress.steps} steps; run the same command to resume"
            self.train_segment(progress, path)
        if progress.returns is None:
            if self.stopping.is_set():
                return f"{algo} {env} seed {seed}: trained ({progress.steps} steps), not replayed yet"
            self.replay(progress, path)
        returns = progress.returns or []
        return f"{algo} {env} seed {seed}: {progress.steps} steps, replay {np.mean(returns):.1f} +- {np.std(returns):.1f}"

    def train_segment(self, progress: Progress, path: Path) -> None:
        """One train.py invocation: the budget's remaining steps, from the last saved model if there is one."""
        algo, env = progress.algo, progress.env
        command = [sys.executable, str(REPO / "train.py"), "--algo", zoo_algo(algo), "--env", env]
        command += ["--seed", str(progress.seed), "--save-freq", str(self.save_freq)]
        if progress.segments:
            last = progress.segments[-1]
            model = latest_model(run_folder(last, algo, env), env)
            if model is None:  # died before its first checkpoint: nothing to resume from, so it is redone
                progress.segments.pop()
            else:
                last.steps = saved_steps(model)
                command += ["-i", str(model)]  # the saved policy keeps its settings, the twin's included
        if algo in VARIANTS and "-i" not in command:
            command += ["--hyperparams", VARIANTS[algo][1]]
        if progress.budget is not None:
            command += ["-n", str(progress.budget - progress.steps)]
        elif self.n_timesteps is not None:
            command += ["-n", str(self.n_timesteps)]
        segment = Segment(str(path.parent / f"segment{len(progress.segments)}"))
        command += ["-f", segment.folder]
        progress.segments.append(segment)
        progress.write(path)
        start = time.time()
        with open(path.parent / f"{Path(segment.folder).name}.log", "w") as log:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            while child.poll() is None:
                if self.stopping.is_set() or (self.deadline is not None and time.time() > self.deadline - STOP_MARGIN_S):
                    self.stopping.set()
                    child.send_signal(signal.SIGINT)  # train.py saves the model, then exits 130
                    child.wait()
                    break
                time.sleep(2)
        segment.wall_s = time.time() - start
        run = run_folder(segment, algo, env)
        model = latest_model(run, env)
        segment.steps = saved_steps(model) if model is not None else 0
        segment.finished = child.returncode == 0
        if child.returncode not in (0, 130):
            progress.write(path)
            raise RuntimeError(f"{' '.join(command)} exited {child.returncode}; see {path.parent}/*.log")
        if progress.budget is None and (run / env / "config.yml").is_file():
            progress.budget = self.n_timesteps or entry_budget(run, env)
        progress.write(path)

    def replay(self, progress: Progress, path: Path) -> None:
        """The final agent replayed as rl_zoo3.benchmark does; its Monitor log gives the episode returns."""
        from stable_baselines3.common.monitor import load_results

        algo, env = progress.algo, progress.env
        reward_log = path.parent / "replay"
        shutil.rmtree(reward_log, ignore_errors=True)  # an earlier replay cut short
        command = [sys.executable, str(REPO / "enjoy.py"), "--algo", zoo_algo(algo), "--env", env]
        command += ["-f", progress.segments[-1].folder]
        command += ["--exp-id", "1", "--no-render", "-n", str(self.eval_steps), "--n-envs", "1", "--seed", str(EVAL_SEED)]
        command += ["--verbose", "0", "--reward-log", str(reward_log)]
        with open(path.parent / "replay.log", "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, check=True)
        episodes = load_results(str(reward_log))
        progress.returns = [float(value) for value in episodes["r"]]
        progress.lengths = [int(value) for value in episodes["l"]]
        progress.write(path)


def train(args: argparse.Namespace) -> None:
    deadline = time.time() + 60 * args.stop_after if args.stop_after else None
    runner = Runner(Path(args.out), args.save_freq, deadline, args.eval_steps, args.n_timesteps)
    for signum in (signal.SIGINT, signal.SIGTERM):  # stop the segments (they save), then exit
        signal.signal(signum, lambda *_: runner.stopping.set())
    runs = [(algo, env, seed) for env in args.envs for seed in args.seeds for algo in args.algos]
    with ThreadPoolExecutor(args.jobs) as pool:
        for summary in pool.map(lambda job: runner.run(*job), runs):
            print(summary, flush=True)
    if runner.stopping.is_set():
        sys.exit(130)


def load_runs(out: Path) -> list[Progress]:
    return [Progress.read(path) for path in sorted(out.glob("*/*/seed*/progress.json"))]


def stitched_curves(progress: Progress) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The run's training-episode returns (sampled actions) and its evaluations (the EvalCallback's) over all its
    segments, each segment's steps offset by those before it."""
    from stable_baselines3.common.monitor import load_results
    from stable_baselines3.common.results_plotter import ts2xy

    sampled_x, sampled_y, eval_x, eval_y, offset = [], [], [], [], 0
    for segment in progress.segments:
        run = run_folder(segment, progress.algo, progress.env)
        if list(run.glob("*.monitor.csv")):
            x, y = ts2xy(load_results(str(run)), "timesteps")
            sampled_x.append(x + offset)
            sampled_y.append(y)
        if (run / "evaluations.npz").is_file():
            evaluations = np.load(run / "evaluations.npz")
            eval_x.append(evaluations["timesteps"] + offset)
            eval_y.append(evaluations["results"].mean(axis=1))
        offset += segment.steps

    def joined(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0)

    return (joined(sampled_x), joined(sampled_y)), (joined(eval_x), joined(eval_y))


def steps_label(steps: int) -> str:
    """A budget as rl_zoo3's benchmark table writes it: 100k, 1M."""
    return f"{steps / 1e6:g}M" if steps >= 1e6 else f"{steps / 1e3:g}k"


def trained_steps(run: Progress) -> str:
    """The steps a run trained, and in how many segments if it was resumed."""
    return f"{run.steps:,}" + (f" in {len(run.segments)} segments" if len(run.segments) > 1 else "")


def speed_and_hours(speeds: list[float], budget: int) -> str:
    """The table's steps/s and hours-here cells: the runs' mean speed and the budget's hours at it, or dashes."""
    if not speeds:
        return "- | -"
    speed = statistics.mean(speeds)
    return f"{speed:.0f} | {budget / speed / 3600:.2f}"


def report(args: argparse.Namespace) -> None:
    """The zoo-shaped table (markdown) and one plot of learning curves per env."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from stable_baselines3.common.results_plotter import window_func

    runs = load_runs(Path(args.report))
    markdown, plots = Path(args.markdown), Path(args.plots)
    plots.mkdir(parents=True, exist_ok=True)
    lines = [
        "| env | algo | mean ± std return | per seed | n_timesteps | eval episodes | seeds | steps/s | hours here |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for env in sorted({run.env for run in runs}):
        figure, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
        for algo in sorted({run.algo for run in runs if run.env == env}):
            group = [run for run in runs if run.env == env and run.algo == algo]
            replayed = [run for run in group if run.returns]
            # No speed or budget yet for a row whose every run is in its first segment: a segment's time is written,
            # and the entry's budget read, when it ends
            speeds = [run.steps / run.wall_s for run in group if run.wall_s > 0]
            budget = max(run.budget or 0 for run in group)
            if replayed:
                mean, std = seed_weighted_mean_std([run.returns or [] for run in replayed])
                score = f"{mean:.1f} ± {std:.1f}"
                per_seed = ", ".join(f"{replay_mean(run):.1f}" for run in replayed)
                episodes = "/".join(str(len(run.returns or [])) for run in replayed)
            else:
                score, per_seed, episodes = "not finished", "", ""
            steps = ", ".join(trained_steps(run) for run in group)
            label = (steps_label(budget) if budget else "-") + (" (bounded)" if any(run.bounded for run in group) else "")
            lines.append(
                f"| {env} | {algo} | {score} | {per_seed} | {label} (trained: {steps}) | {episodes} | "
                f"{len(replayed)}/{len(group)} | {speed_and_hours(speeds, budget)} |"
            )
            color = {"ppo_stpn": "C0", "ppo_lstm": "C1"}.get(algo, "C2")
            for index, ((x, y), evaluations) in enumerate(stitched_curves(run) for run in group):
                if len(x) > EPISODE_WINDOW:  # the training episodes' returns, smoothed as rl_zoo3's plots do
                    x, y = window_func(x, y, EPISODE_WINDOW, np.mean)
                for axis, (steps, returns) in zip(axes, ((x, y), evaluations), strict=True):
                    axis.plot(steps, returns, color=color, alpha=0.7, label=algo if index == 0 else None)
        axes[0].set(title=f"{env}: training episodes (sampled, mean of {EPISODE_WINDOW})", xlabel="steps", ylabel="return")
        axes[1].set(title="evaluations during training", xlabel="steps")
        axes[1].legend()
        figure.tight_layout()
        figure.savefig(plots / f"benchmark_{env}.png", dpi=90)
        plt.close(figure)
    markdown.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.agents:
        export_agents(runs, Path(args.agents))


# What a replay needs from a run folder (rl_zoo3's layout): the model, the settings and the normalisation statistics
AGENT_FILES = ("{env}.zip", "{env}/config.yml", "{env}/args.yml", "{env}/vecnormalize.pkl")


def export_agents(runs: list[Progress], folder: Path) -> None:
    """The final agent of each row's best seed, laid out as rl-baselines3-zoo's trained agents
    (``<algo>/<env>_1/``), and ``benchmark.json`` with what its replay scored; not the twins, which are
    comparisons, not recipes (``enjoy.py`` knows no ``ppo_stpn_twin``)."""
    rows = []
    for algo, env in sorted({(run.algo, run.env) for run in runs if run.returns and run.algo not in VARIANTS}):
        best = max((run for run in runs if (run.algo, run.env) == (algo, env) and run.returns), key=replay_mean)
        source, target = run_folder(best.segments[-1], algo, env), folder / algo / f"{env}_1"
        shutil.rmtree(target, ignore_errors=True)
        for name in (pattern.format(env=env) for pattern in AGENT_FILES):
            if (source / name).is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / name, target / name)
        returns = best.returns or []
        rows.append(
            {"algo": algo, "env": env, "seed": best.seed, "steps": best.steps, "eval_seed": EVAL_SEED,
             "returns": returns, "lengths": best.lengths, "mean": float(np.mean(returns)), "std": float(np.std(returns))}
        )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "benchmark.json").write_text(json.dumps(rows, indent=1))


def seed_weighted_mean_std(returns_per_seed: list[list[float]]) -> tuple[float, float]:
    """
    Mean and std of a replay's episode returns with every seed weighing the same, whatever its episode count: a seed
    whose agent fails fast plays many short episodes in the replay's fixed steps and would otherwise swamp the row.
    For one seed, the episodes' mean and std (rl_zoo3's).
    """
    means = np.array([np.mean(returns) for returns in returns_per_seed])
    variances = np.array([np.var(returns) for returns in returns_per_seed])
    mean = float(means.mean())
    return mean, float(np.sqrt(np.mean(variances + (means - mean) ** 2)))


def replay_mean(run: Progress) -> float:
    return float(np.mean(run.returns or []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["CartPoleNoVel-v1"])
    parser.add_argument(
        "--algos",
        nargs="+",
        default=["ppo_stpn", "ppo_lstm"],
        help="rl_zoo3 algorithms, or ppo_stpn_twin: the STPN entry with plastic=False",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="results/zoo_benchmark", help="progress and run folders (resumed)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (one torch thread each)")
    parser.add_argument("--save-freq", type=int, default=50_000, help="steps between checkpoints")
    parser.add_argument("--stop-after", type=float, help="minutes after which running segments save and stop")
    parser.add_argument("--n-timesteps", type=int, help="a bounded run of N steps instead of the entry's budget")
    parser.add_argument("--eval-steps", type=int, default=EVAL_STEPS, help="replay steps (rl_zoo3.benchmark's -n)")
    parser.add_argument("--report", help="write the table and plots of this --out folder instead of training")
    parser.add_argument("--markdown", default="results/zoo_benchmark/table.md", help="where the report writes its table")
    parser.add_argument("--plots", default="results/img", help="where the report writes one plot per env")
    parser.add_argument("--agents", help="with --report: export each row's best final agent into this folder")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    report(args) if args.report else train(args)


if __name__ == "__main__":
    main()
