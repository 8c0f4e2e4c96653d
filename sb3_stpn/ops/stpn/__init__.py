"""The STPN recurrence as an op: a reference and three fused paths behind one entry point, ``stpn_sequence``."""

from sb3_stpn.ops.stpn.config import DIVERGENCE_ADVICE, NORM_EPS, DivergedStateError, StpnConfig, StpnParams
from sb3_stpn.ops.stpn.dispatch import KERNEL_ENV, KERNELS, kernel_choice, stpn_sequence, triton_kernel_available
from sb3_stpn.ops.stpn.fused_cpp import cpp_kernel_available
from sb3_stpn.ops.stpn.naive import stpn_sequence_reference, stpn_step

__all__ = [
    "DIVERGENCE_ADVICE",
    "KERNELS",
    "KERNEL_ENV",
    "NORM_EPS",
    "DivergedStateError",
    "StpnConfig",
    "StpnParams",
    "cpp_kernel_available",
    "kernel_choice",
    "stpn_sequence",
    "stpn_sequence_reference",
    "stpn_step",
    "triton_kernel_available",
]
