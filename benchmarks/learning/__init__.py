"""
RL learning benchmark: StpnPPO vs RecurrentPPO (LSTM), eval return against environment steps.

Every model is built by rl_zoo3's machinery (``StpnExperimentManager``) from the project's zoo
configs, the single source of hyperparameters: the ``ppo_stpn.yml`` entry (STPN), the same entry
with ``plastic=False`` (the STPN's plasticity-free twin: what the plasticity adds or costs), the
matching ``ppo_lstm.yml`` entry (LSTM at the STPN's parameter count), the same LSTM entry with the
STPN's hidden size (equal memory width), and on InvertedPendulum-v5 SB3's PPO ``MlpPolicy`` with the
STPNf entry's PPO settings (no memory). Only ``n_timesteps`` differs from the configs.

Each run evaluates the deterministic and the sampled policy on a separate, single evaluation env
(normalisation statistics synced from training) at step 0 and evenly through training, without touching
training's random streams (the training is the same whatever ``--evals``/``--eval-episodes``), and records the actor's
synaptic energy per step (``sb3_stpn.common.energy``) during the final evaluation; STPN runs also keep,
per rollout, the plasticity diagnostics of ``StpnDiagnosticsCallback``. The mazes also
get reference rows: the random policy, a memoryless wall-avoider and the shortest-path oracle.

``--tasks popgym`` runs the validation suite: six POPGym memory tasks (the ``bench`` extra) that nothing here was
tuned on, through the configs' ``default`` entries. Each row then also gets POPGym's metric, the MMER (the best
mean return of the sampled policy over training's evaluations), and the suite rliable's aggregate mean and IQM of
the MMER over every (seed, task) run, with bootstrap confidence intervals.

Writes to ``--out``: ``learning.md`` (the table), ``learning.json`` (all curves), ``runs.jsonl`` (each run as it
ends; a run into a folder that holds runs resumes) and one ``<task>.png`` learning-curve plot per task (mean over
seeds, shaded +- std), plus ``popgym_suite.png`` (the suite's aggregates) for the POPGym tasks.

The package, by job: ``variants`` (the models and the zoo hyperparameters each trains with), ``runs`` (a job, its
training and its record in ``runs.jsonl``), ``callbacks`` (evaluations and diagnostics during training),
``references`` (the scripted reference policies), ``stats`` (each row's numbers), ``suite`` (POPGym's aggregates,
rliable), ``report`` (the table and plots) and ``__main__`` (the command line and its process pool).

Usage: ``python -m benchmarks.learning [--tasks ... | popgym] [--seeds 3] [--steps N | TASK=N ...] [--jobs 2] [--quick]``
"""
