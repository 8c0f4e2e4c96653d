"""The models the learning benchmark compares and the hyperparameters each trains with, all from the zoo configs."""

from dataclasses import dataclass
from typing import Any

TASKS = (
    "CartPoleNoVel-v1",
    "PendulumNoVel-v1",
    "GridMaze9x9-v0",
    "GridMaze-v0",
    "MiniGrid-MemoryS7-v0",
    "InvertedPendulum-v5",
)
# The validation suite: POPGym's memory tasks (``pip install "sb3-stpn[bench]"``), never tuned on here, so they run
# through the configs' ``default`` entries. Returns are POPGym's, scaled to [-1, 1].
POPGYM_TASKS = (
    "popgym-RepeatFirstEasy-v0",
    "popgym-AutoencodeEasy-v0",
    "popgym-HigherLowerEasy-v0",
    "popgym-VelocityOnlyCartpoleEasy-v0",
    "popgym-NoisyPositionOnlyPendulumEasy-v0",
    "popgym-MineSweeperEasy-v0",
)

# Policy kwargs that only the STPN policies take (dropped for the memory-less MLP PPO)
STPN_ONLY_KWARGS = ("stpn_hidden_size", "stpn_kwargs", "enable_critic_stpn", "shared_stpn")
# What the STPN's twin changes in the entry's stpn_kwargs
PLASTICITY_OFF = {"plastic": False, "plastic_bias": False}


@dataclass(frozen=True)
class Variant:
    """One model of the comparison: which zoo config it comes from and how it is changed."""

    key: str
    algo: str  # rl_zoo3 algorithm name
    config: str  # sb3_stpn/zoo_configs/<config>.yml
    equal_hidden: bool = False  # LSTM with the STPN's hidden size instead of the entry's
    mlp: bool = False  # SB3 PPO MlpPolicy with the entry's PPO settings
    twin: bool = False  # the STPN entry with plastic=False (no plastic bias either), nothing else changed


STPN = Variant("stpn", "ppo_stpn", "ppo_stpn")
STPN_TWIN = Variant("stpn_twin", "ppo_stpn", "ppo_stpn", twin=True)
LSTM_PARAMS = Variant("lstm_params", "ppo_lstm", "ppo_lstm")
LSTM_HIDDEN = Variant("lstm_hidden", "ppo_lstm", "ppo_lstm", equal_hidden=True)
MLP = Variant("mlp", "ppo", "ppo_stpn", mlp=True)
VARIANTS = {variant.key: variant for variant in (STPN, STPN_TWIN, LSTM_PARAMS, LSTM_HIDDEN, MLP)}


def variants_for(task: str) -> list[Variant]:
    """The models compared on ``task``: STPN, its twin and both LSTM rows everywhere, plus the MLP PPO on MuJoCo."""
    return [STPN, STPN_TWIN, LSTM_PARAMS, LSTM_HIDDEN, *([MLP] if task == "InvertedPendulum-v5" else [])]


def zoo_entry(config: str, task: str) -> dict[str, Any]:
    """The zoo config entry of ``task`` with ``policy_kwargs`` evaluated to a dict (in rl_zoo3's namespace, as it does)."""
    import rl_zoo3.exp_manager

    from sb3_stpn.zoo import CONFIG_DIR, load_config_entry

    entry = dict(load_config_entry(CONFIG_DIR / f"{config}.yml", task, is_atari=False))
    kwargs = entry.get("policy_kwargs") or {}
    entry["policy_kwargs"] = dict(eval(kwargs, vars(rl_zoo3.exp_manager)) if isinstance(kwargs, str) else kwargs)
    return entry


def with_changes(entry: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """
    ``changes`` on top of ``entry`` as the zoo puts ``--hyperparams`` on a config entry: each key replaced, except
    ``policy_kwargs``, merged into the entry's by the zoo's :func:`~sb3_stpn.zoo.hyperparams_opt.merge_policy_kwargs`
    (``stpn_kwargs`` key by key too).
    """
    from sb3_stpn.zoo.hyperparams_opt import merge_policy_kwargs

    result = {**entry, **changes}
    if "policy_kwargs" in changes:
        result["policy_kwargs"] = merge_policy_kwargs(entry["policy_kwargs"], changes["policy_kwargs"])
    return result


def variant_entry(variant: Variant, task: str, steps: int, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    The hyperparameters ``variant`` trains with on ``task``: its zoo entry with only the documented changes.

    ``changes`` (``--stpn-hyperparams`` or ``--lstm-hyperparams``, for tuning experiments) go on top of the entry as
    train.py's ``--hyperparams`` would (:func:`with_changes`).
    """
    entry = zoo_entry(variant.config, task)
    entry["n_timesteps"] = steps
    if changes:
        entry = with_changes(entry, changes)
    if task in POPGYM_TASKS:
        register_popgym()  # Autoencode's Tuple observation: the default entry's policy: auto flattens it
    if variant.equal_hidden:
        entry["policy_kwargs"]["lstm_hidden_size"] = stpn_hidden_size(task)
    if variant.twin:
        entry = with_changes(entry, {"policy_kwargs": {"stpn_kwargs": PLASTICITY_OFF}})
    if variant.mlp:
        entry["policy"] = "MlpPolicy"
        entry.pop("sequence_length", None)
        entry["policy_kwargs"] = {k: v for k, v in entry["policy_kwargs"].items() if k not in STPN_ONLY_KWARGS}
    return entry


def register_popgym() -> None:
    """Import POPGym, which registers its ``popgym-*`` ids (the ``bench`` extra); a missing install is one line."""
    try:
        import popgym  # noqa: F401
    except ImportError:
        raise SystemExit('the POPGym tasks need POPGym: pip install "sb3-stpn[bench]"') from None


def stpn_hidden_size(task: str) -> int:
    """The STPN's hidden size in the ``ppo_stpn.yml`` entry of ``task`` (the policies' default, 64, if unset)."""
    return zoo_entry("ppo_stpn", task)["policy_kwargs"].get("stpn_hidden_size", 64)
