"""Models saved by earlier versions keep loading and acting as they did when saved (``tests/data``)."""

import json
from pathlib import Path

import numpy as np
import pytest

from sb3_stpn import StpnPPO
from sb3_stpn.common.policies import POLICY_STPN_DEFAULTS
from tests.data.make_saved_models import DATA, SAVED_MODELS, replay


@pytest.mark.parametrize("name", list(SAVED_MODELS))
def test_saved_model_loads_and_reproduces_its_recorded_actions(name: str) -> None:
    recorded = json.loads((DATA / f"{name}.json").read_text())
    replayed = replay(StpnPPO.load(DATA / f"{name}.zip", device="cpu"))
    assert replayed["actions"] == recorded["actions"]
    for key in ("values", "final_h", "final_F"):
        np.testing.assert_allclose(replayed[key], recorded[key], rtol=1e-5, atol=1e-7, err_msg=key)


# The STPN settings the policies changed across versions, as each version's models act with them
PAPERS_MODEL = {"lambda_max": None, "retention_max": None, "lambda_lr_scale": 1.0, "gamma_lr_scale": 1.0}
SETTINGS_OF_VERSION = {
    "v0_1_0": PAPERS_MODEL,
    "v0_2_0": {**PAPERS_MODEL, "lambda_max": 0.5},
    "v0_3_0": {**PAPERS_MODEL, "retention_max": 0.95, "lambda_lr_scale": 0.1, "gamma_lr_scale": 0.1},
}


@pytest.mark.parametrize("name", list(SAVED_MODELS))
def test_saved_models_keep_the_defaults_of_their_version(name: str) -> None:
    """0.1.0 models recorded only the settings they were given, and 0.2.0 models every setting but retention_max (which
    came later): what they did not record they load with the layer's own defaults, the paper's model, as they acted."""
    stpn = StpnPPO.load(DATA / f"{name}.zip", device="cpu").policy.stpn_actor
    expected = SETTINGS_OF_VERSION[name[name.index("_v") + 1 :]]
    assert {setting: getattr(stpn, setting) for setting in expected} == expected


def test_a_model_saved_now_keeps_every_stpn_setting_when_the_defaults_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = StpnPPO("MlpStpnPolicy", "CartPole-v1", n_steps=16, batch_size=16, policy_kwargs=dict(stpn_hidden_size=4))
    assert model.policy_kwargs["stpn_kwargs"] == model.policy.stpn_kwargs  # every setting, saved with the model
    retention_max = model.policy.stpn_actor.retention_max
    assert retention_max == POLICY_STPN_DEFAULTS["retention_max"]
    model.save(tmp_path / "model.zip")
    recorded = replay(model)
    monkeypatch.setitem(POLICY_STPN_DEFAULTS, "retention_max", 0.5)  # a later version's default
    loaded = StpnPPO.load(tmp_path / "model.zip", device="cpu")
    assert loaded.policy.stpn_actor.retention_max == retention_max
    assert repr(loaded.policy) == repr(model.policy)
    replayed = replay(loaded)
    assert replayed["actions"] == recorded["actions"]
    np.testing.assert_allclose(replayed["final_F"], recorded["final_F"], rtol=1e-5, atol=1e-7)
