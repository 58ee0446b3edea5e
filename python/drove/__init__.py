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


#: Starts an embedded cluster on loopback and connects to it (``Session.local``).
local = Session.local
#: Connects to a running cluster's coordinator (``Session.connect``).
connect = Session.connect
