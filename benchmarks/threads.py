"""
How many torch threads train fastest on CPU: the README's first command and each kind of zoo entry, side by side.

Each row runs ``train.py --algo ppo_stpn --env ENV -n STEPS --eval-freq -1 --num-threads K`` in a fresh process (the
whole command, imports and env creation included, as a user runs it) with ``OMP_NUM_THREADS`` unset, for each thread
count K, alternating the counts so that a change of load hits them alike. Entries: an MLP (CartPoleNoVel-v1),
MiniGrid-MemoryS7-v0, the paper's maze with 64 envs (GridMaze-v0) and Atari's CNN (PongNoFrameskip-v4). Run it on
an idle machine, then beside another job (``--beside-job`` starts one: a second training of the MLP entry, one
thread), since a shared machine is where a wrong thread count costs most. Prints a markdown table.

Usage: ``python -m benchmarks.threads [--threads 1 2] [--repeats 1] [--beside-job] [--quick]``
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Entry kind, env and steps: a few rollouts of each (the maze's one rollout is 64 envs x 200 steps)
ENTRIES = (
    ("MLP", "CartPoleNoVel-v1", 2048),
    ("MiniGrid", "MiniGrid-MemoryS7-v0", 2048),
    ("maze, 64 envs", "GridMaze-v0", 12800),
    ("Atari CNN", "PongNoFrameskip-v4", 1024),
)
QUICK_STEPS = {"CartPoleNoVel-v1": 256}


def train_seconds(env_id: str, steps: int, threads: int) -> float:
    """Wall-clock seconds of the whole ``train.py`` command with ``--num-threads threads``."""
    environment = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, str(REPO / "train.py"), "--algo", "ppo_stpn", "--env", env_id, "-n", str(steps),
                   "--eval-freq", "-1", "--seed", "0", "--num-threads", str(threads), "-f", folder]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, env=environment, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start


def background_job() -> subprocess.Popen:
    """Another job on the machine: a long one-thread training of the MLP entry."""
    command = [sys.executable, str(REPO / "train.py"), "--env", "CartPoleNoVel-v1", "-n", "100000000", "--eval-freq", "-1",
               "--num-threads", "1", "-f", tempfile.mkdtemp()]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to compare")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each (entry, thread count)")
    parser.add_argument("--beside-job", action="store_true", help="run beside another training job")
    parser.add_argument("--quick", action="store_true", help="the MLP entry only, a few steps: checks the script works")
    args = parser.parse_args(argv)
    entries = [(kind, env, QUICK_STEPS[env]) for kind, env, _ in ENTRIES if env in QUICK_STEPS] if args.quick else ENTRIES
    job = background_job() if args.beside_job else None
    try:
        header = " | ".join(f"{threads} thread{'s' if threads > 1 else ''} (s)" for threads in args.threads)
        print(f"{os.cpu_count()} CPUs, {'beside another job' if job else 'no other job started'}, min of {args.repeats}\n")
        print(f"| entry | env, steps | {header} | fastest |")
        print("| --- | --- |" + " --- |" * (len(args.threads) + 1))
        for kind, env_id, steps in entries:
            seconds: dict[int, float] = {}
            for _ in range(args.repeats):
                for threads in args.threads:
                    seconds[threads] = min(seconds.get(threads, float("inf")), train_seconds(env_id, steps, threads))
            fastest = min(seconds, key=seconds.__getitem__)
            cells = " | ".join(f"{seconds[threads]:.1f}" for threads in args.threads)
            print(f"| {kind} | {env_id}, {steps} | {cells} | {fastest} |", flush=True)
    finally:
        if job is not None:
            job.kill()
            job.wait()


if __name__ == "__main__":
    main()
