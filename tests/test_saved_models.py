"""Models saved by earlier versions keep loading and acting as they did when saved (``tests/data``)."""

import json

import numpy as np
import pytest

from sb3_stpn import StpnPPO
from tests.data.make_saved_models import DATA, SAVED_MODELS, replay


@pytest.mark.parametrize("name", list(SAVED_MODELS))
def test_saved_model_loads_and_reproduces_its_recorded_actions(name: str) -> None:
    recorded = json.loads((DATA / f"{name}.json").read_text())
    replayed = replay(StpnPPO.load(DATA / f"{name}.zip", device="cpu"))
    assert replayed["actions"] == recorded["actions"]
    for key in ("values", "final_h", "final_F"):
        np.testing.assert_allclose(replayed[key], recorded[key], rtol=1e-5, atol=1e-7, err_msg=key)
