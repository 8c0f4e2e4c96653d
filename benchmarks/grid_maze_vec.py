"""Speed of the vectorised grid maze against SB3's DummyVecEnv of GridMazeEnv, and the reference policies' returns.

Both envs are built as the zoo builds them (``make_grid_maze_vec_env``: a ``GridMazeVecEnv`` in a ``VecMonitor``;
``make_vec_env``: a ``DummyVecEnv`` of ``Monitor``-wrapped ``GridMazeEnv``) and stepped with uniformly random actions,
drawn beforehand; steps/s counts maze steps (one per maze per ``step``). Then the random, memoryless wall-avoider and
shortest-path oracle policies play ``--episodes`` episodes on each maze size (``sb3_stpn.envs.grid_maze_vec``). Prints
two markdown tables and writes them as JSON.

Run: ``python -m benchmarks.grid_maze_vec [--quick] [--n-envs 1 64 512] [--episodes 1000] [--sizes 9 13]``.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv

from sb3_stpn.envs.grid_maze import N_ACTIONS, GridMazeEnv
from sb3_stpn.envs.grid_maze_vec import REFERENCE_POLICIES, make_grid_maze_vec_env, reference_returns


def steps_per_second(env: VecEnv, n_steps: int) -> float:
    """Maze steps per second of ``n_steps`` calls of ``env.step`` with random actions (auto-resets included)."""
    actions = np.random.default_rng(0).integers(N_ACTIONS, size=(n_steps, env.num_envs))
    env.reset()
    start = time.perf_counter()
    for step_actions in actions:
        env.step(step_actions)
    return n_steps * env.num_envs / (time.perf_counter() - start)


def speed_table(n_envs_list: list[int], min_maze_steps: int) -> list[dict]:
    """Steps/s of both envs for each number of mazes, each timed over at least ``min_maze_steps`` maze steps."""
    rows = []
    for n_envs in n_envs_list:
        n_steps = max(min_maze_steps // n_envs, 200)
        vectorised = steps_per_second(make_grid_maze_vec_env(n_envs, seed=0), n_steps)
        dummy = steps_per_second(make_vec_env(GridMazeEnv, n_envs=n_envs, seed=0), n_steps)
        rows.append({"n_envs": n_envs, "vectorised": vectorised, "dummy": dummy})
    return rows


def returns_table(sizes: list[int], n_episodes: int) -> list[dict]:
    """Mean and standard error of each reference policy's return per episode, on each maze size."""
    rows = []
    for size in sizes:
        for name, policy in REFERENCE_POLICIES.items():
            returns = reference_returns(policy, n_episodes, seed=0, size=size)
            rows.append(
                {
                    "size": size,
                    "policy": name,
                    "mean": float(np.mean(returns)),
                    "sem": float(np.std(returns) / np.sqrt(n_episodes)),
                }
            )
    return rows


def markdown(speed: list[dict], returns: list[dict], n_episodes: int) -> str:
    lines = ["| mazes | GridMazeVecEnv steps/s | DummyVecEnv of GridMazeEnv steps/s | speed-up |", "|---:|---:|---:|---:|"]
    lines += [
        f"| {r['n_envs']} | {r['vectorised']:,.0f} | {r['dummy']:,.0f} | {r['vectorised'] / r['dummy']:.1f}x |" for r in speed
    ]
    lines += ["", f"| maze | policy | return per episode ({n_episodes} episodes, ± s.e.) |", "|---|---|---:|"]
    lines += [f"| {r['size']}x{r['size']} | {r['policy']} | {r['mean']:.1f} ± {r['sem']:.1f} |" for r in returns]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget, for tests")
    parser.add_argument("--n-envs", type=int, nargs="+", default=[1, 64, 512], help="numbers of mazes to time")
    parser.add_argument("--episodes", type=int, default=1000, help="episodes per reference policy and maze size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[9, 13], help="maze sizes for the reference returns")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grid_maze_vec.json"))
    args = parser.parse_args(argv)
    min_maze_steps, n_episodes = (1_000, 50) if args.quick else (200_000, args.episodes)

    speed = speed_table(args.n_envs, min_maze_steps)
    returns = returns_table(args.sizes, n_episodes)
    table = markdown(speed, returns, n_episodes)
    print(table)
    report = {"speed": speed, "returns": returns, "table": table}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
