"""drove from Python: SQL and DataFrames on a drove cluster, results as Arrow.

    import drove
    with drove.local(2) as s:
        s.register_tpch("tpch-sf1")
        print(s.sql("select count(*) from lineitem").to_pandas())

``drove.local(workers)`` starts an embedded cluster in this process;
``drove.connect("host:7070", token=..., tls_dir=...)`` joins a running one. Errors are
raised as ``drove.DroveError`` with drove's message.
"""

from ._drove import DataFrame, DroveError, GroupBy, Session

__all__ = ["DataFrame", "DroveError", "GroupBy", "Session", "connect", "local"]


def local(workers: int = 2, progress: "float | None" = 1.0) -> Session:
    """Starts an embedded cluster of ``workers`` workers on loopback and connects to it.

    A job that runs longer than ``progress`` seconds shows its progress on
    ``sys.stderr``; ``progress=None`` never shows it.
    """
    return Session.local(workers, progress)


def connect(
    address: str,
    token: "str | None" = None,
    tls_dir: "str | None" = None,
    progress: "float | None" = 1.0,
) -> Session:
    """Connects to the coordinator at ``address`` (host:port); see ``local`` for
    ``progress``."""
    return Session.connect(address, token, tls_dir, progress)
