"""The Short-Term Plasticity Neuron layer (Rodriguez, Guo & Moraitis, ICML 2022).

The model and its parameter names follow the op's statement of the model (``sb3_stpn/ops/stpn/README.md``):
every synapse holds a slow weight ``W`` and a fast, decaying component ``F`` that a
Hebbian (or Oja) term updates at every step; how fast each synapse forgets
(``weight_lambda``) and how strongly it learns (``weight_gamma``) are trained by
backpropagation through time.
"""

import math
import numbers
from typing import Literal

import torch as th
from torch import nn

from sb3_stpn.common.utils import check_positive_int
from sb3_stpn.ops.stpn import DIVERGENCE_ADVICE, DivergedStateError, StpnConfig, StpnParams, stpn_sequence

PlasticityRule = Literal["hebbian", "oja"]
NormTime = Literal["pre", "post"]
StpnState = tuple[th.Tensor, th.Tensor]


class STPN(nn.Module):
    """
    A layer of Short-Term Plasticity Neurons, run over whole sequences.

    :param input_size: Number of inputs ``I``.
    :param hidden_size: Number of neurons ``H``.
    :param recurrent: STPNr (default) feeds the previous output back as presynaptic input,
        ``z_t = [x_t, h_{t-1}]``; ``False`` gives the feed-forward STPNf, ``z_t = x_t``.
    :param normalize: Divide each neuron's efficacies by their L2 norm (the paper's default).
    :param norm_time: When ``F`` is divided by the norm (with ``normalize`` only). ``"pre"`` (default;
        the paper's ART, Pong and most ablations): the old ``F`` is divided by ``n_t = ||W + F_{t-1}||``
        before the Hebbian term is added. ``"post"`` (the paper's maze): the new ``F`` is divided by its
        own norm after the update and the clamp, ``F_t = F' / ||W + F'||``, so ``W + F_t`` keeps a bounded norm.
    :param norm_gain: Learn a per-neuron gain ``norm_gain`` (H,), initialised to 1, that multiplies the
        norm wherever it is used (the drive and the division of ``F``), so that a neuron's drive is no
        longer bounded by ``||z_t||`` (with ``normalize`` only; the paper's ``learn_weight_norm``, off by default).
    :param clamp: If set, clamp ``F`` to ``[-clamp, clamp]`` after every update.
    :param scalar_plasticity: One scalar ``weight_lambda`` and ``weight_gamma`` for the whole
        layer instead of one per synapse (the paper's scalar-STP ablation).
    :param plastic_bias: Give the bias a fast component with its own ``bias_lambda`` and
        ``bias_gamma``. It is carried as one extra last column of ``F``, so the state keeps
        two tensors; it is never part of a norm.
    :param rule: ``"hebbian"``: dF = h z^T; ``"oja"``: dF = h (z - F^T h)^T.
    :param lambda_max: If set, ``weight_lambda`` and ``bias_lambda`` act clamped to at most this value (in the
        forward, so the gradient is zero above it). None (default) is the paper's model. Training can push
        some lambdas above 1, and F then grows without bound where nothing else bounds it (``normalize=False``,
        a plastic bias, Oja's rule) until it is inf or NaN, which the layer reports with a
        :class:`~sb3_stpn.ops.stpn.config.DivergedStateError`: ``lambda_max=1.0``, ``retention_max`` (or a
        ``clamp``) prevents it.
    :param retention_max: If set, in (0, 1]: the most of ``F_{t-1}`` that ``F_t`` keeps, whatever the size of ``W``.
        With normalisation before the update (``norm_time="pre"``) the decays act at most ``retention_max * n_t``, a
        bound tied to the norm: where ``lambda / n_t`` would exceed it, ``F`` keeps exactly ``retention_max`` of itself.
        So ``F`` never grows by its decay (the runaway that makes ``F`` as large as ``W`` within ~50 steps), yet may
        hold a memory for about ``1 / (1 - retention_max)`` steps, where ``lambda_max`` bounds ``lambda`` alone and
        the memory it allows shrinks as ``W`` grows. Otherwise (post-normalisation, ``normalize=False``, a plastic
        bias's decays) it clamps the decays as ``lambda_max`` does. None (default) is the paper's model.
    :param lambda_init: Bounds of the uniform initialisation of ``weight_lambda``.
    :param gamma_init: ``weight_gamma`` is drawn from U(-a, a) with a = gamma_init / sqrt(H).
    :param plastic: ``False`` gives the STPN's plasticity-free twin: no ``weight_lambda``/``weight_gamma``
        (nor bias plasticity) parameters, ``F`` stays zero and the layer is an Elman RNN (STPNr) or a
        feed-forward layer (STPNf) with the STPN's normalisation and initialisation. The baseline that
        says what the plasticity adds.
    :param lambda_lr_scale: The decays act as ``lambda_lr_scale * weight_lambda`` (and ``bias_lambda``), the
        stored parameter being initialised so that the product has the distribution above. Under Adam,
        which moves each parameter by about the learning rate whatever its gradient's scale (while that is
        well above Adam's ``eps``), this trains the decays at ``lambda_lr_scale`` times the learning rate,
        through any learning-rate schedule.
        1 (default) is the paper's model.
    :param gamma_lr_scale: The same for the plasticity rates: ``gamma = gamma_lr_scale * weight_gamma``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        recurrent: bool = True,
        normalize: bool = True,
        norm_time: NormTime = "pre",
        norm_gain: bool = False,
        clamp: float | None = None,
        scalar_plasticity: bool = False,
        plastic_bias: bool = False,
        rule: PlasticityRule = "hebbian",
        lambda_max: float | None = None,
        retention_max: float | None = None,
        lambda_init: tuple[float, float] = (0.0, 1.0),
        gamma_init: float = 1e-3,
        plastic: bool = True,
        lambda_lr_scale: float = 1.0,
        gamma_lr_scale: float = 1.0,
    ):
        super().__init__()
        input_size = check_positive_int(input_size, "STPN input_size")
        hidden_size = check_positive_int(hidden_size, "STPN hidden_size")
        if lambda_init[0] > lambda_init[1]:
            raise ValueError(f"lambda_init=(low, high) needs low <= high, got {tuple(lambda_init)}")
        # The op's options, checked once (by StpnConfig) and handed as they are to every forward
        self.config = StpnConfig(
            recurrent=recurrent,
            normalize=normalize,
            clamp=clamp,
            rule=rule,
            norm_time=norm_time,
            lambda_max=lambda_max,
            retention_max=retention_max,
        )
        for name, scale in (("lambda_lr_scale", lambda_lr_scale), ("gamma_lr_scale", gamma_lr_scale)):
            if not (isinstance(scale, numbers.Real) and math.isfinite(scale) and scale > 0):
                raise ValueError(f"{name} must be a positive number, got {scale!r}")
        if plastic_bias and not plastic:
            raise ValueError("plastic_bias=True needs plastic=True: the plasticity-free twin has no plastic bias")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.scalar_plasticity = scalar_plasticity
        self.plastic_bias = plastic_bias
        self.lambda_init = tuple(lambda_init)
        self.gamma_init = gamma_init
        self.plastic = plastic
        self.lambda_lr_scale = float(lambda_lr_scale)
        self.gamma_lr_scale = float(gamma_lr_scale)
        # Recorded per sample and step by forward() when record_energy is set (see energy below)
        self.record_energy = False
        self.last_energy: th.Tensor | None = None

        presynaptic = self.presynaptic_size
        plasticity_shape = () if scalar_plasticity else (hidden_size, presynaptic)
        self.weight = nn.Parameter(th.empty(hidden_size, presynaptic))
        self.bias = nn.Parameter(th.empty(hidden_size))
        if plastic:
            self.weight_lambda = nn.Parameter(th.empty(plasticity_shape))
            self.weight_gamma = nn.Parameter(th.empty(plasticity_shape))
        else:
            # Zero rates keep F at zero on every kernel path; scalars, broadcast by the kernels, and not saved
            self.register_buffer("weight_lambda", th.zeros(()), persistent=False)
            self.register_buffer("weight_gamma", th.zeros(()), persistent=False)
        if plastic_bias:
            bias_plasticity_shape = () if scalar_plasticity else (hidden_size,)
            self.bias_lambda = nn.Parameter(th.empty(bias_plasticity_shape))
            self.bias_gamma = nn.Parameter(th.empty(bias_plasticity_shape))
        self.norm_gain = nn.Parameter(th.empty(hidden_size)) if norm_gain else None
        self.reset_parameters()

    @property
    def recurrent(self) -> bool:
        """STPNr (True) or STPNf (False): ``config.recurrent``."""
        return self.config.recurrent

    @property
    def lambda_max(self) -> float | None:
        """The bound the decays act clamped to, or None: ``config.lambda_max``."""
        return self.config.lambda_max

    @property
    def retention_max(self) -> float | None:
        """The most of ``F_{t-1}`` that ``F_t`` keeps, or None: ``config.retention_max``."""
        return self.config.retention_max

    @property
    def presynaptic_size(self) -> int:
        """``K``: inputs, plus the neurons' own previous outputs for STPNr."""
        return self.input_size + (self.hidden_size if self.recurrent else 0)

    @property
    def state_shape(self) -> tuple[tuple[int], tuple[int, int]]:
        """Per-environment shapes of ``h`` and ``F`` (``F`` has one more column with a plastic bias)."""
        return (self.hidden_size,), (self.hidden_size, self.presynaptic_size + int(self.plastic_bias))

    def reset_parameters(self) -> None:
        """The paper's initialisation (the table in ``sb3_stpn/ops/stpn/README.md``, Parameters)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)
        if self.norm_gain is not None:
            nn.init.ones_(self.norm_gain)
        if not self.plastic:
            return
        plasticity = [(self.weight_lambda, self.weight_gamma)]
        if self.plastic_bias:
            plasticity.append((self.bias_lambda, self.bias_gamma))
        low, high = (value / self.lambda_lr_scale for value in self.lambda_init)
        gamma_bound = self.gamma_init * bound / self.gamma_lr_scale
        for decay, rate in plasticity:
            nn.init.uniform_(decay, low, high)
            nn.init.uniform_(rate, -gamma_bound, gamma_bound)

    def plasticity_parameters(self) -> list[nn.Parameter]:
        """The stored decays and rates (``weight_lambda``, ``weight_gamma`` and a plastic bias's): none for the twin."""
        return [parameter for name, parameter in self.named_parameters() if name.endswith(("_lambda", "_gamma"))]

    def plasticity(self) -> tuple[th.Tensor, th.Tensor, tuple[th.Tensor, th.Tensor] | None]:
        """
        The decays and rates the layer acts with: ``(lambda, gamma, (bias_lambda, bias_gamma) or None)``, the
        learning-rate scales applied and the decays clamped to their fixed bounds (``lambda_max``, and
        ``retention_max`` where it is not tied to the norm), as the op clamps them; the op also applies a bound
        tied to the norm, per step (:attr:`~sb3_stpn.ops.stpn.config.StpnConfig.relative_lambda_max`).
        """

        def scaled(parameter: th.Tensor, scale: float) -> th.Tensor:
            return parameter if scale == 1.0 else parameter * scale

        def decay_of(parameter: th.Tensor, bound: float | None) -> th.Tensor:
            decay = scaled(parameter, self.lambda_lr_scale)
            return decay if bound is None else decay.clamp(max=bound)

        weight_bound, bias_bound = self.config.decay_bounds()
        decay, rate = decay_of(self.weight_lambda, weight_bound), scaled(self.weight_gamma, self.gamma_lr_scale)
        if not self.plastic_bias:
            return decay, rate, None
        return decay, rate, (decay_of(self.bias_lambda, bias_bound), scaled(self.bias_gamma, self.gamma_lr_scale))

    def initial_state(
        self, batch_size: int, device: th.device | str | None = None, dtype: th.dtype | None = None
    ) -> StpnState:
        """
        Zero ``(h, F)``, the state at an episode start.

        :param batch_size: Number of sequences ``B``.
        :param device: Device of the state (None: the layer's).
        :param dtype: Dtype of the state (None: the layer's).
        """
        device = self.weight.device if device is None else device
        dtype = self.weight.dtype if dtype is None else dtype
        h_shape, f_shape = self.state_shape
        return th.zeros((batch_size, *h_shape), device=device, dtype=dtype), th.zeros(
            (batch_size, *f_shape), device=device, dtype=dtype
        )

    def forward(
        self,
        x: th.Tensor,
        state: StpnState | None = None,
        episode_starts: th.Tensor | None = None,
    ) -> tuple[th.Tensor, StpnState]:
        """
        Run the layer over a sequence.

        :param x: Inputs, shape (T, B, I).
        :param state: ``(h, F)`` with ``h`` (B, H) and ``F`` (B, H, K), or None for zeros.
        :param episode_starts: (T, B) of 0/1: reset ``h`` and ``F`` to zero *before* that step.
        :return: Outputs (T, B, H) and the final state ``(h, F)``. For STPNf, ``h`` is the last output.
        """
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"STPN expects input of shape (T, B, {self.input_size}), got {tuple(x.shape)}")
        if state is None:
            state = self.initial_state(x.shape[1], x.device, x.dtype)
        weight_lambda, weight_gamma, bias_plasticity = self.plasticity()
        bias_lambda, bias_gamma = (None, None) if bias_plasticity is None else bias_plasticity
        params = StpnParams(
            self.weight, self.bias, weight_lambda, weight_gamma, bias_lambda, bias_gamma, norm_gain=self.norm_gain
        )
        try:
            outputs, h, fast, energy = stpn_sequence(
                x,
                state,
                params=params,
                config=self.config,
                episode_starts=episode_starts,
                record_energy=self.record_energy,
            )
        except DivergedStateError:  # the kernel cannot name the layer, nor tell a broken parameter from a growing F
            broken = [name for name, parameter in self.named_parameters() if not th.isfinite(parameter).all()]
            if broken:
                raise DivergedStateError(
                    f"{self!r}: its own parameters {', '.join(broken)} are inf or NaN, so F is too: a NaN or inf "
                    "loss or gradient reached them in training; lower learning_rate or max_grad_norm and check the "
                    "rewards and observations (and if the decays may exceed 1, bound F with clamp=c, lambda_max=1.0 or "
                    "retention_max=0.95)"
                ) from None
            raise DivergedStateError(f"{self!r}: {DIVERGENCE_ADVICE}") from None
        self.last_energy = energy
        return outputs, (h, fast)

    def extra_repr(self) -> str:
        config = self.config
        variant = "STPNr" if config.recurrent else "STPNf"
        options = [f"{self.input_size}, {self.hidden_size}", variant, f"normalize={config.normalize}", f"rule={config.rule}"]
        if config.normalize and config.norm_time != "pre":
            options.append(f"norm_time={config.norm_time!r}")
        if self.norm_gain is not None:
            options.append("norm_gain=True")
        if config.clamp is not None:
            options.append(f"clamp={config.clamp}")
        if config.lambda_max is not None:
            options.append(f"lambda_max={config.lambda_max}")
        if config.retention_max is not None:
            options.append(f"retention_max={config.retention_max}")
        if self.scalar_plasticity:
            options.append("scalar_plasticity=True")
        if self.plastic_bias:
            options.append("plastic_bias=True")
        if not self.plastic:
            options.append("plastic=False")
        for name in ("lambda_lr_scale", "gamma_lr_scale"):
            if getattr(self, name) != 1.0:
                options.append(f"{name}={getattr(self, name)}")
        return ", ".join(options)


def plasticity_parameter_ids(policy: th.nn.Module) -> set[int]:
    """The ids of every STPN layer's stored decays and rates in ``policy`` (none for twins and LSTMs)."""
    return {
        id(parameter) for layer in policy.modules() if isinstance(layer, STPN) for parameter in layer.plasticity_parameters()
    }
