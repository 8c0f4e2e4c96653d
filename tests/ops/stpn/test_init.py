"""The op package's public names, ``sb3_stpn.ops.stpn.__all__``: what it takes from its modules, and nothing else."""

import inspect

import sb3_stpn.ops.stpn as op


def test_all_is_exactly_the_public_names_the_package_takes_from_its_modules() -> None:
    public = {name for name, value in vars(op).items() if not name.startswith("_") and not inspect.ismodule(value)}
    assert public == set(op.__all__)


def test_all_holds_no_private_name_of_the_op() -> None:
    # A private name is no part of the interface: patching it through the package would patch a copy the op never reads
    assert [name for name in op.__all__ if name.startswith("_")] == []
