"""Training diagnostics of STPN (and LSTM) recurrent PPO, written to the SB3 logger."""

import torch as th
from stable_baselines3.common.callbacks import BaseCallback

from sb3_stpn.common.energy import ActorEnergyRecorder
from sb3_stpn.common.policies import actor_memory
from sb3_stpn.common.stpn import STPN

# Histograms would flood the text outputs: only TensorBoard draws them
NON_HISTOGRAM_FORMATS = ("stdout", "log", "json", "csv")


class StpnDiagnosticsCallback(BaseCallback):
    """
    Logs, once per rollout, what the paper's claims are about: energy and short-term plasticity.

    For any recurrent PPO (``StpnPPO`` or sb3-contrib's ``RecurrentPPO`` with a single-layer LSTM):

    - ``stpn/energy_per_step``: the actor's synaptic energy (``shared/STPN.md``, Energy), mean
      over the rollout's steps and environments; one tag for both, so the curves overlay.

    For STPN actors also, from the state carried at the rollout's end and the current parameters:

    - ``stpn/mean_abs_F``: mean ``|F|`` over environments and synapses;
    - ``stpn/depressed_fraction``: fraction of synapses with ``|W + F| < |W|`` (depressed);
    - ``stpn/weight_lambda``, ``stpn/weight_gamma``: histograms (TensorBoard only).

    A plastic bias's extra column of ``F`` is not a synapse and is left out.

    :param verbose: Verbosity level, as for every SB3 callback.
    """

    def __init__(self, verbose: int = 0):
        super().__init__(verbose)
        self._recorder: ActorEnergyRecorder | None = None
        self._energy_sum = 0.0
        self._energy_count = 0

    def _on_rollout_start(self) -> None:
        self._recorder = ActorEnergyRecorder(self.model.policy)
        self._energy_sum, self._energy_count = 0.0, 0

    def _on_step(self) -> bool:
        assert self._recorder is not None, "a step outside a rollout"
        energy = self._recorder.last_energy
        if energy is not None:
            self._energy_sum += energy.sum().item()
            self._energy_count += energy.numel()
        return True

    def _on_rollout_end(self) -> None:
        assert self._recorder is not None, "a rollout end without its start"
        self._recorder.close()
        if self._energy_count:
            self.logger.record("stpn/energy_per_step", self._energy_sum / self._energy_count)
        actor = actor_memory(self.model.policy)
        if isinstance(actor, STPN):  # only StpnPPO drives an STPN policy
            self._record_plasticity(actor, self.model.last_stpn_states.pi[1])  # type: ignore[attr-defined]

    def _on_training_end(self) -> None:
        # A rollout cut short by another callback never reaches _on_rollout_end
        if self._recorder is not None:
            self._recorder.close()

    def _record_plasticity(self, actor: STPN, fast: th.Tensor) -> None:
        """Log the fast weights' size and how many synapses they depress, and the plasticity parameters."""
        with th.no_grad():
            synaptic_fast = fast[..., : actor.presynaptic_size]
            self.logger.record("stpn/mean_abs_F", synaptic_fast.abs().mean().item())
            depressed = (actor.weight + synaptic_fast).abs() < actor.weight.abs()
            self.logger.record("stpn/depressed_fraction", depressed.float().mean().item())
            for name in ("weight_lambda", "weight_gamma"):
                values = getattr(actor, name).detach().cpu().flatten()
                self.logger.record(f"stpn/{name}", values, exclude=NON_HISTOGRAM_FORMATS)
