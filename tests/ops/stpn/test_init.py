"""The compatibility module ``sb3_stpn.common.stpn_kernel``: the op's public names, and nothing else."""

import sb3_stpn.ops.stpn as op
from sb3_stpn.common import stpn_kernel


def test_reexports_the_public_names_as_the_same_objects() -> None:
    public = {name for name in vars(stpn_kernel) if not name.startswith("_")}
    assert public == set(op.__all__)
    for name in op.__all__:
        assert getattr(stpn_kernel, name) is getattr(op, name), name


def test_holds_no_private_name_of_the_op() -> None:
    # Patching a private name here would patch a copy the op never reads
    private = {name for name in vars(stpn_kernel) if name.startswith("_") and not name.startswith("__")}
    assert private == set()
