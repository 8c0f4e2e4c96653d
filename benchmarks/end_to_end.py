"""
StpnPPO vs sb3-contrib's RecurrentPPO (LSTM): environment steps per second and peak memory.

Each (env, algo) run trains from the project's zoo config (``sb3_stpn/zoo_configs/<algo>.yml``, the same
settings and matched parameter counts) for the same number of steps, in a fresh child process
so that its peak resident memory (RSS) is its own. Runs alternate between the two algorithms, and
steps per second count only ``learn`` (env creation and imports excluded). On CUDA one rollout and
update run first, untimed, so that Triton's kernel compilation and cuDNN's set-up are not counted.
Prints a markdown table and writes JSON.

Usage: ``python -m benchmarks.end_to_end [--envs CartPoleNoVel-v1 ...] [--steps N] [--device cuda] [--quick]``
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ALGOS = ("ppo_lstm", "ppo_stpn")
# Steps per env: a few rollouts of each config (Atari: 8 envs x 128 steps per rollout)
DEFAULT_STEPS = {"CartPoleNoVel-v1": 8192, "PongNoFrameskip-v4": 4096, "InvertedPendulum-v5": 2048}
QUICK_STEPS = {"CartPoleNoVel-v1": 512}


def run_child(algo: str, env_id: str, steps: int, device: str) -> dict:
    """Train ``algo`` on ``env_id`` for ``steps`` steps from its zoo config on ``device``; return speed and peak RSS."""
    from sb3_stpn.ops.stpn import KERNEL_ENV, cpp_kernel_available
    from sb3_stpn.zoo import CONFIG_DIR, StpnExperimentManager

    with tempfile.TemporaryDirectory() as log_folder:
        manager = StpnExperimentManager(
            argparse.Namespace(),
            algo,
            env_id,
            log_folder,
            n_timesteps=steps,
            eval_freq=-1,
            config=str(CONFIG_DIR / f"{algo}.yml"),
            verbose=0,
            seed=0,
            log_interval=-1,
            device=device,
        )
        model, _ = manager.setup_experiment()
        # Build or load the C++ kernel now, so that its one-off compilation is not timed
        cpp_kernel_available()
        warmup = model.n_steps * model.n_envs if model.device.type == "cuda" else 0
        if warmup:
            model.learn(warmup)
        start = time.perf_counter()
        model.learn(steps, reset_num_timesteps=not warmup)
        seconds = time.perf_counter() - start
    import torch as th

    timed_steps = model.num_timesteps - warmup
    return {
        "algo": algo,
        "env": env_id,
        "device": str(model.device),
        "steps": timed_steps,
        "seconds": seconds,
        "steps_per_second": timed_steps / seconds,
        # Linux reports kilobytes
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": th.get_num_threads(),
        "kernel": os.environ.get(KERNEL_ENV, "auto"),
    }


def run_in_child(algo: str, env_id: str, steps: int, threads: int, device: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.end_to_end", "--child", algo, env_id, str(steps)]
    command += ["--threads", str(threads), "--device", device]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{algo} on {env_id} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = [
        "| env | steps | LSTM steps/s | STPN steps/s | STPN / LSTM | LSTM peak RSS MiB | STPN peak RSS MiB | RSS ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for env_id in dict.fromkeys(row["env"] for row in rows):
        by_algo = {algo: [row for row in rows if row["env"] == env_id and row["algo"] == algo] for algo in ALGOS}
        speed = {algo: statistics.median(row["steps_per_second"] for row in runs) for algo, runs in by_algo.items()}
        rss = {algo: max(row["peak_rss_mib"] for row in runs) for algo, runs in by_algo.items()}
        lines.append(
            f"| {env_id} | {by_algo['ppo_stpn'][0]['steps']} | {speed['ppo_lstm']:.0f} | {speed['ppo_stpn']:.0f} "
            f"| {speed['ppo_stpn'] / speed['ppo_lstm']:.2f} | {rss['ppo_lstm']:.0f} | {rss['ppo_stpn']:.0f} "
            f"| {rss['ppo_stpn'] / rss['ppo_lstm']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=None, help="env ids (default: CartPoleNoVel-v1, Pong, InvertedPendulum)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: per env, see DEFAULT_STEPS)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each algo per env (median speed is reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each run")
    parser.add_argument("--device", default="auto", help="torch device of the models: auto (default, as SB3), cpu, cuda")
    parser.add_argument("--quick", action="store_true", help="a tiny run, to check the script works")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/end_to_end.json"))
    parser.add_argument("--child", nargs=3, metavar=("ALGO", "ENV", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch as th

    th.set_num_threads(args.threads)
    if args.child:
        algo, env_id, steps = args.child
        print(json.dumps(run_child(algo, env_id, int(steps), args.device)))
        return

    defaults = QUICK_STEPS if args.quick else DEFAULT_STEPS
    env_ids = args.envs or list(defaults)
    rows = []
    for env_id in env_ids:
        steps = args.steps or defaults.get(env_id, 4096)
        for _ in range(args.repeats):
            for algo in ALGOS:
                row = run_in_child(algo, env_id, steps, args.threads, args.device)
                rows.append(row)
                print(f"{algo} {env_id}: {row['steps_per_second']:.0f} steps/s, {row['peak_rss_mib']:.0f} MiB", flush=True)
    settings = f"{args.threads} torch thread(s), device {rows[0]['device']}, kernel {rows[0]['kernel']}"
    print(f"\nStpnPPO vs RecurrentPPO (LSTM), zoo configs, {settings}\n")
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "device": rows[0]["device"], "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
