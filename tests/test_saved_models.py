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


@pytest.mark.parametrize("name", list(SAVED_MODELS))
def test_saved_models_keep_the_defaults_of_their_version(name: str) -> None:
    """The 0.1.0 models recorded only the settings they were given: they load with the layer's lambda_max (None), the
    policies' default then. 0.2.0 models recorded every setting, the policies' lambda_max=0.5 among them."""
    expected = None if name.endswith("_v0_1_0") else 0.5
    assert StpnPPO.load(DATA / f"{name}.zip", device="cpu").policy.stpn_actor.lambda_max == expected


def test_a_model_saved_now_keeps_every_stpn_setting_when_the_defaults_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = StpnPPO("MlpStpnPolicy", "CartPole-v1", n_steps=16, batch_size=16, policy_kwargs=dict(stpn_hidden_size=4))
    assert model.policy_kwargs["stpn_kwargs"] == model.policy.stpn_kwargs  # every setting, saved with the model
    lambda_max = model.policy.stpn_actor.lambda_max
    assert lambda_max == POLICY_STPN_DEFAULTS["lambda_max"]
    model.save(tmp_path / "model.zip")
    recorded = replay(model)
    monkeypatch.setitem(POLICY_STPN_DEFAULTS, "lambda_max", 0.25)  # a later version's default
    loaded = StpnPPO.load(tmp_path / "model.zip", device="cpu")
    assert loaded.policy.stpn_actor.lambda_max == lambda_max
    assert repr(loaded.policy) == repr(model.policy)
    replayed = replay(loaded)
    assert replayed["actions"] == recorded["actions"]
    np.testing.assert_allclose(replayed["final_F"], recorded["final_F"], rtol=1e-5, atol=1e-7)
