"""Training diagnostics of STPN (and LSTM) recurrent PPO, written to the SB3 logger."""

import statistics

import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy

from sb3_stpn.common.energy import ActorEnergyRecorder
from sb3_stpn.common.policies import actor_memory
from sb3_stpn.common.stpn import STPN, plasticity_parameter_ids

# Histograms would flood the text outputs: only TensorBoard draws them
NON_HISTOGRAM_FORMATS = ("stdout", "log", "json", "csv")


class StpnDiagnosticsCallback(BaseCallback):
    """
    Logs, once per rollout, what the paper's claims are about: energy and short-term plasticity.

    For any recurrent PPO (``StpnPPO`` or sb3-contrib's ``RecurrentPPO`` with a single-layer LSTM):

    - ``stpn/energy_per_step``: the actor's synaptic energy (``sb3_stpn/ops/stpn/README.md``, Energy), mean
      over the rollout's steps and environments; one tag for both, so the curves overlay;
    - ``stpn/grad_norm``, ``stpn/grad_norm_plasticity``, ``stpn/clipped_fraction``: over the last PPO update's
      gradient steps, the median norm of the whole gradient before clipping, the median norm of the part that
      falls on the decays and rates of every STPN layer (as stored: 0 without plasticity), and the fraction of
      steps that ``max_grad_norm`` clipped. PPO clips the one global norm, so where the plasticity's gradient
      dominates, it sets the clip for every parameter.

    For STPN actors also, from the state carried at the rollout's end and the current parameters:

    - ``stpn/mean_abs_F``: mean ``|F|`` over environments and synapses;
    - ``stpn/depressed_fraction``: fraction of synapses with ``|W + F| < |W|`` (depressed);
    - ``stpn/F_over_W`` (and ``stpn/critic_F_over_W`` for a critic STPN of its own): mean over
      environments and neurons of ``||F_i|| / ||W_i||``, how far the fast weights have moved each
      neuron's efficacies away from its slow ones (1: as large as ``W``);
    - ``stpn/weight_lambda``, ``stpn/weight_gamma``: histograms (TensorBoard only) of the decays and
      rates the layer acts with (``lambda_lr_scale`` and ``gamma_lr_scale`` applied, the decays bounded by
      ``lambda_max``), and their mean, std, min and max as ``..._mean`` etc. (every output);
    - ``stpn/update_weight_lambda``, ``stpn/update_weight_gamma``, ``stpn/update_weight``,
      ``stpn/update_other``: the last PPO update's relative size ``||delta|| / ||before||`` of the
      actor's decays, rates, slow weights, and of every other policy parameter but a critic STPN's decays
      and rates: whether the optimiser moves the plasticity faster than the rest.

    A plastic bias's extra column of ``F`` is not a synapse and is left out. A plasticity-free twin
    (``plastic=False``) logs only what it has: no lambda or gamma tags.

    :param verbose: Verbosity level, as for every SB3 callback.
    """

    def __init__(self, verbose: int = 0):
        super().__init__(verbose)
        self._recorder: ActorEnergyRecorder | None = None
        self._energy_sum = 0.0
        self._energy_count = 0
        # Parameter groups as they were before the last PPO update (set at each rollout's end)
        self._before_update: dict[str, th.Tensor] | None = None
        self._gradients: GradientNormMeter | None = None

    def _on_training_start(self) -> None:
        self._gradients = GradientNormMeter(self.model.policy)

    def _on_rollout_start(self) -> None:
        if self._before_update is not None:
            for group, after in self._parameter_groups().items():
                before = self._before_update[group]
                self.logger.record(f"stpn/update_{group}", ((after - before).norm() / before.norm().clamp_min(1e-12)).item())
        total, plasticity = self._gradients.take() if self._gradients is not None else ([], [])
        if total:
            max_norm = self.model.max_grad_norm  # type: ignore[attr-defined]
            self.logger.record("stpn/grad_norm", statistics.median(total))
            self.logger.record("stpn/grad_norm_plasticity", statistics.median(plasticity))
            self.logger.record("stpn/clipped_fraction", sum(norm > max_norm for norm in total) / len(total))
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
            states = self.model.last_stpn_states  # type: ignore[attr-defined]
            self._record_plasticity(actor, states.pi[1])
            critic = self.model.policy.stpn_critic
            if isinstance(critic, STPN):
                self.logger.record("stpn/critic_F_over_W", fast_to_slow_ratio(critic, states.vf[1]))
            self._before_update = self._parameter_groups()

    def _on_training_end(self) -> None:
        if self._gradients is not None:
            self._gradients.close()
            self._gradients = None
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
            self.logger.record("stpn/F_over_W", fast_to_slow_ratio(actor, fast))
            if not actor.plastic:
                return
            for name, acting in zip(("weight_lambda", "weight_gamma"), actor.plasticity()[:2], strict=True):
                values = acting.detach().cpu().flatten()
                self.logger.record(f"stpn/{name}", values, exclude=NON_HISTOGRAM_FORMATS)
                for statistic in ("mean", "std", "min", "max"):
                    value = getattr(values, statistic)() if values.numel() > 1 or statistic != "std" else th.zeros(())
                    self.logger.record(f"stpn/{name}_{statistic}", value.item())

    def _parameter_groups(self) -> dict[str, th.Tensor]:
        """Copies of the actor STPN's decays and rates (as it acts with them), slow weights, and all else, flattened."""
        actor = actor_memory(self.model.policy)
        assert isinstance(actor, STPN), "only an STPN actor has plasticity parameters"
        groups: dict[str, list[th.Tensor]] = {"weight": [actor.weight]}
        if actor.plastic:
            decay, rate, _ = actor.plasticity()
            groups.update(weight_lambda=[decay], weight_gamma=[rate])
        # "other" leaves out every layer's stored plasticity parameters: scaled by 1 / lr_scale, they would swamp it
        left_out = {id(actor.weight)} | plasticity_parameter_ids(self.model.policy)
        groups["other"] = [p for p in self.model.policy.parameters() if id(p) not in left_out]
        with th.no_grad():
            return {name: th.cat([p.detach().flatten() for p in tensors]).clone() for name, tensors in groups.items()}


class GradientNormMeter:
    """
    The norm of each gradient step's whole gradient and of its plasticity part, read before any clipping: each
    parameter adds its gradient's squared norm once backward has accumulated it, and the optimiser's step closes
    the step's record. The sums stay on the device until :meth:`take` (no synchronisation per parameter).
    """

    def __init__(self, policy: BasePolicy):
        plasticity = plasticity_parameter_ids(policy)
        self._squares: dict[str, th.Tensor | float] = {"total": 0.0, "plasticity": 0.0}
        self._steps: list[tuple[th.Tensor | float, th.Tensor | float]] = []

        def add(parameter: th.Tensor) -> None:
            square = parameter.grad.detach().square().sum()  # type: ignore[union-attr]
            self._squares["total"] = self._squares["total"] + square
            if id(parameter) in plasticity:
                self._squares["plasticity"] = self._squares["plasticity"] + square

        def close_step(*_: object) -> None:
            self._steps.append((self._squares["total"] ** 0.5, self._squares["plasticity"] ** 0.5))
            self._squares = dict.fromkeys(self._squares, 0.0)

        self._handles = [p.register_post_accumulate_grad_hook(add) for p in policy.parameters() if p.requires_grad]
        self._handles.append(policy.optimizer.register_step_pre_hook(close_step))

    def take(self) -> tuple[list[float], list[float]]:
        """The records since the last call (whole and plasticity norms, one per gradient step), then forget them."""
        steps, self._steps = self._steps, []
        return [float(total) for total, _ in steps], [float(part) for _, part in steps]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def fast_to_slow_ratio(layer: STPN, fast: th.Tensor) -> float:
    """Mean over environments and neurons of ``||F_i|| / ||W_i||`` (the synaptic columns of ``F`` only)."""
    with th.no_grad():
        synaptic_fast = fast[..., : layer.presynaptic_size]
        return (synaptic_fast.norm(dim=-1) / layer.weight.norm(dim=-1).clamp_min(1e-12)).mean().item()
