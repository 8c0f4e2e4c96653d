"""PPO with STPN memory: sb3-contrib's RecurrentPPO driving an STPN policy."""

import warnings
from typing import Any, ClassVar, TypeVar

import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule, TensorDict
from stable_baselines3.common.utils import FloatSchedule

from sb3_stpn.common.buffers import StpnDictRolloutBuffer, StpnRolloutBuffer
from sb3_stpn.common.policies import LAYER_STPN_SETTINGS, StpnActorCriticPolicy
from sb3_stpn.ppo_stpn.policies import CnnStpnPolicy, MlpStpnPolicy, MultiInputStpnPolicy

SelfStpnPPO = TypeVar("SelfStpnPPO", bound="StpnPPO")


def warn_if_cuda_is_missing(device: th.device | str) -> None:
    """
    Warn (once per process: one warning location) when ``device`` asks for CUDA and torch sees none.

    SB3 then runs on the CPU without a word, which a user who asked for the GPU learns only from the time it takes.
    """
    if str(device).startswith("cuda") and not th.cuda.is_available():
        warnings.warn(
            f"device {str(device)!r} asks for CUDA, but torch sees no CUDA GPU here: running on the CPU instead",
            UserWarning,
            stacklevel=1,  # one location for every caller, so that the warning shows once
        )


class StpnPPO(RecurrentPPO):
    """
    Proximal Policy Optimization with a Short-Term Plasticity Neuron (STPN) memory.

    Rollout collection, the timeout bootstrap and the PPO update are RecurrentPPO's; the STPN
    state ``(h, F)`` of actor and critic takes the place of the LSTM's ``(hidden, cell)``.
    What differs is how training sequences are made: each environment's rollout is cut into
    sequences of ``sequence_length`` steps and only the state entering each sequence is stored
    (see :mod:`sb3_stpn.common.buffers`), since ``F`` is ``H x K`` floats per environment.
    Every sequence is replayed whole from that state; the STPN resets itself at episode starts.

    The arguments are :class:`sb3_contrib.RecurrentPPO`'s, plus ``sequence_length``:

    :param policy: The policy: ``"MlpStpnPolicy"``, ``"CnnStpnPolicy"``, ``"MultiInputStpnPolicy"`` or an
        :class:`~sb3_stpn.common.policies.StpnActorCriticPolicy` subclass.
    :param env: The environment to learn from (if registered in Gymnasium, can be its id).
    :param learning_rate: The learning rate, a constant or a function of the progress remaining (from 1 to 0).
    :param n_steps: The number of steps to run for each environment per update (the rollout holds
        ``n_steps * n_envs`` steps).
    :param batch_size: Minibatch size, in steps.
    :param n_epochs: Number of epochs when optimizing the surrogate loss.
    :param gamma: Discount factor.
    :param gae_lambda: Factor for the trade-off of bias vs variance of the Generalized Advantage Estimator.
    :param clip_range: Clipping parameter, a constant or a function of the progress remaining (from 1 to 0).
    :param clip_range_vf: Clipping parameter for the value function, a constant or a function of the progress
        remaining; None (default) does not clip the value function. This clipping depends on the reward scaling.
    :param normalize_advantage: Whether to normalize the advantage.
    :param ent_coef: Entropy coefficient for the loss.
    :param vf_coef: Value function coefficient for the loss.
    :param max_grad_norm: The maximum value for the gradient clipping.
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE) instead of action noise.
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE; -1 (default) samples only at
        the beginning of the rollout.
    :param target_kl: Limit the KL divergence between updates (the clipping alone may not prevent large updates);
        None (default): no limit.
    :param sequence_length: Length of the training sequences (truncated BPTT window);
        None (default) uses the whole rollout, ``n_steps``. ``batch_size`` still counts steps:
        a minibatch holds ``max(1, batch_size // sequence_length)`` sequences.
    :param stats_window_size: Number of episodes the logged success rate, episode length and reward are averaged
        over.
    :param tensorboard_log: The log location for TensorBoard (None: no logging).
    :param policy_kwargs: Additional arguments passed to the policy on creation (see
        :class:`~sb3_stpn.common.policies.StpnActorCriticPolicy`).
    :param verbose: The verbosity level: 0 no output, 1 info, 2 debug.
    :param seed: Seed for the pseudo random generators.
    :param device: Device (cpu, cuda, ...) on which the code should run; ``"auto"`` takes the GPU if there is one.
    :param _init_setup_model: Whether to build the network at the creation of the instance.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpStpnPolicy": MlpStpnPolicy,
        "CnnStpnPolicy": CnnStpnPolicy,
        "MultiInputStpnPolicy": MultiInputStpnPolicy,
    }
    policy: StpnActorCriticPolicy
    # RecurrentPPO's name for the carried state (here the STPNs' (h, F)), which sb3-contrib types None before setup
    _last_lstm_states: RNNStates  # type: ignore[assignment]

    def __init__(
        self,
        policy: str | type[StpnActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 128,
        batch_size: int | None = 128,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule = 0.2,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        target_kl: float | None = None,
        sequence_length: int | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        self.sequence_length = sequence_length
        # BaseAlgorithm.load builds the model this way, then restores its saved attributes, policy_kwargs included
        self._restoring_saved_model = not _init_setup_model
        warn_if_cuda_is_missing(device)
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            clip_range=clip_range,
            clip_range_vf=clip_range_vf,
            normalize_advantage=normalize_advantage,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            target_kl=target_kl,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        if not (isinstance(self.policy_class, type) and issubclass(self.policy_class, StpnActorCriticPolicy)):
            raise ValueError(
                f"StpnPPO needs an STPN policy ({', '.join(self.policy_aliases)}), got {self.policy_class}; "
                "a model saved by another algorithm must be loaded with that algorithm's class"
            )
        if self.normalize_advantage and self.n_steps * self.n_envs < 2:
            raise ValueError(
                "normalize_advantage needs at least 2 steps per rollout (n_steps * n_envs, here 1): the std of one "
                "advantage is NaN; raise n_steps or n_envs, or pass normalize_advantage=False"
            )
        policy_kwargs = dict(self.policy_kwargs)
        if self._restoring_saved_model:
            # A setting the saved model did not record takes the layer's own default, which it acted with: before
            # 0.2.0 only the given settings were recorded, and a setting added since did not exist for it
            policy_kwargs["stpn_kwargs"] = {**LAYER_STPN_SETTINGS, **(policy_kwargs.get("stpn_kwargs") or {})}
        self.policy = self.policy_class(
            self.observation_space,
            self.action_space,
            self.lr_schedule,
            use_sde=self.use_sde,
            **policy_kwargs,
        ).to(self.device)
        # Saved with the model: every STPN setting it acts with, so that later versions' defaults cannot change it
        self.policy_kwargs = {**policy_kwargs, "stpn_kwargs": dict(self.policy.stpn_kwargs)}
        # RecurrentPPO's rollout code carries the state under this name (sb3_stpn's own code reads last_stpn_states)
        self._last_lstm_states = self.policy.initial_state(self.n_envs)

        buffer_class = StpnDictRolloutBuffer if isinstance(self.observation_space, spaces.Dict) else StpnRolloutBuffer
        self.rollout_buffer = buffer_class(
            self.n_steps,
            self.observation_space,
            self.action_space,
            device=self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
            sequence_length=self.sequence_length,
            store_critic_state=self.policy.stpn_critic is not None,
        )

        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_vf is not None:
            if isinstance(self.clip_range_vf, (float, int)) and self.clip_range_vf <= 0:
                raise ValueError("`clip_range_vf` must be positive, pass `None` to deactivate vf clipping")
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_restoring_saved_model"]

    @property
    def last_stpn_states(self) -> RNNStates:
        """The actor and critic STPN states ``(h, F)`` (layer axis first) that the next rollout step starts from."""
        return self._last_lstm_states

    def set_parameters(
        self,
        load_path_or_dict: str | TensorDict,
        exact_match: bool = True,
        device: th.device | str = "auto",
    ) -> None:
        """
        SB3's ``set_parameters``, with a one-line error when the saved tensors do not fit this policy.

        :param load_path_or_dict: A saved model's zip file (path or file-like), or a nested dictionary of state
            dictionaries by object name (see ``get_parameters``).
        :param exact_match: Whether the given parameters must include every module and every parameter of each
            (False updates only those given).
        :param device: Device on which the parameters are loaded.
        """
        try:
            super().set_parameters(load_path_or_dict, exact_match=exact_match, device=device)
        except RuntimeError as error:
            problems = ("size mismatch", "Missing key(s)", "Unexpected key(s)")  # torch's load_state_dict lines
            mismatch = next((line.strip() for line in str(error).splitlines() if line.strip().startswith(problems)), None)
            if mismatch is None:
                raise
            raise ValueError(
                f"The saved parameters do not fit this STPN policy ({mismatch}): "
                "load it with the policy_kwargs it was trained with"
            ) from error

    def learn(
        self: SelfStpnPPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "StpnPPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfStpnPPO:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
