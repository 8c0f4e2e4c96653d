"""
Where the STPN op lived up to version 0.1.0: its public names, re-exported from :mod:`sb3_stpn.ops.stpn`.

Only public names are here (the same objects), so that code importing them keeps working; private ones
were never part of the interface, and patching one here would patch nothing the op uses.
"""

from sb3_stpn.ops.stpn import *  # noqa: F403
from sb3_stpn.ops.stpn import __all__  # noqa: F401
