"""The error the commands report in one line: what :func:`sb3_stpn.cli.train_main` and ``enjoy_main`` print as ``error:``."""


class ZooError(Exception):
    """A problem with the command line, a config or a saved file; the message is one line naming the fix."""
