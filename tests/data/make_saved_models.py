"""
Writes the saved models that ``tests/test_saved_models.py`` loads, and the actions they gave when saved.

Run once per release whose format should stay loadable (``python -m tests.data.make_saved_models``); the
committed files are the record: later versions must load them and reproduce the recorded actions.
"""

import json
from pathlib import Path

import numpy as np
import torch as th

from sb3_stpn import StpnPPO

DATA = Path(__file__).parent
# One model per policy layout that names its modules differently in policy.pth
SAVED_MODELS = {
    "stpn_cartpole_v0_1_0": dict(policy_kwargs=dict(stpn_hidden_size=8, stpn_kwargs=dict(plastic_bias=True, norm_gain=True))),
    "stpn_cartpole_shared_v0_1_0": dict(
        policy_kwargs=dict(stpn_hidden_size=8, shared_stpn=True, enable_critic_stpn=False, stpn_kwargs=dict(recurrent=False))
    ),
    # 0.2.0 records every STPN setting of its version, the policies' new default (lambda_max=0.5) included
    "stpn_cartpole_v0_2_0": dict(policy_kwargs=dict(stpn_hidden_size=8)),
    # 0.3.0: the policies' retention_max=0.95, with the plasticity at 0.1x the learning rate
    "stpn_cartpole_v0_3_0": dict(policy_kwargs=dict(stpn_hidden_size=8)),
}


def probe_observations(seed: int = 0) -> np.ndarray:
    """Fixed observations (steps, envs, 4) that every version replays."""
    return np.random.default_rng(seed).normal(size=(12, 2, 4)).astype(np.float32)


def replay(model: StpnPPO) -> dict[str, list]:
    """Deterministic actions, the values and the final state over the probe, with an episode start midway."""
    observations = probe_observations()
    state, actions, values = None, [], []
    for step, obs in enumerate(observations):
        starts = np.array([step == 0 or step == 6, step == 0])
        action, state = model.predict(obs, state=state, episode_start=starts, deterministic=True)
        actions.append(action.tolist())
        with th.no_grad():
            obs_tensor = model.policy.obs_to_tensor(obs)[0]
            lstm_states = tuple(th.as_tensor(part) for part in state)
            values.append(model.policy.predict_values(obs_tensor, lstm_states, th.zeros(2)).flatten().tolist())
    return {"actions": actions, "values": values, "final_h": state[0].tolist(), "final_F": state[1].tolist()}


def main() -> None:
    """Write the models of this version; those of earlier versions are the record and stay as they are."""
    for name, kwargs in SAVED_MODELS.items():
        if (DATA / f"{name}.zip").exists():
            continue
        model = StpnPPO("MlpStpnPolicy", "CartPole-v1", n_steps=32, batch_size=32, n_epochs=1, seed=0, **kwargs)
        model.learn(64)
        model.save(DATA / f"{name}.zip")
        (DATA / f"{name}.json").write_text(json.dumps(replay(StpnPPO.load(DATA / f"{name}.zip")), indent=1) + "\n")


if __name__ == "__main__":
    main()
