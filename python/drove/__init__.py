"""drove from Python: SQL and DataFrames on a drove cluster, results as Arrow.

    import drove
    with drove.local(2) as s:
        s.register_tpch("tpch-sf1")
        print(s.sql("select count(*) from lineitem").to_pandas())

``drove.local(workers)`` starts an embedded cluster in this process;
``drove.connect("host:7070", token=..., tls_dir=...)`` joins a running one. Errors are
raised as ``drove.DroveError`` with drove's message, or one of its kinds:
``ConnectionFailed``, ``QueryError`` (refused before it ran), ``JobFailed`` and
``AccessDenied``.

Python runs on the workers three ways: ``drove.udf`` and ``DataFrame.map_batches``
(functions over Arrow batches in SQL and DataFrames), ``session.mapreduce`` (map and
reduce functions) and ``session.client()`` (task graphs of futures, as in Dask).
"""

import os
import sys

from ._drove import (
    AccessDenied,
    ConnectionFailed,
    DataFrame,
    DroveError,
    GroupBy,
    JobFailed,
    QueryError,
    Session,
    Udf,
)
from ._tasks import Client, Future, TaskError

__all__ = [
    "AccessDenied",
    "Client",
    "Future",
    "TaskError",
    "ConnectionFailed",
    "DataFrame",
    "DroveError",
    "GroupBy",
    "JobFailed",
    "QueryError",
    "Session",
    "Udf",
    "connect",
    "local",
    "udf",
]



def local(workers: int = 2, progress: "float | None" = 1.0, slots: "int | None" = None) -> Session:
    """Starts an embedded cluster of ``workers`` workers (of ``slots`` task slots each,
    by default 2) on loopback and connects to it. Its workers run Python functions with
    this interpreter. A job that runs longer than ``progress`` seconds shows its
    progress on ``sys.stderr`` (None: never)."""
    # Workers run Python functions only where DROVE_PYTHON names an interpreter: these,
    # in this process and on loopback, use this one, which has this package.
    os.environ.setdefault("DROVE_PYTHON", sys.executable)
    return Session.local(workers, progress, slots)


#: Connects to a running cluster's coordinator (``Session.connect``).
connect = Session.connect


def udf(fn, input_types, return_type, name=None) -> Udf:
    """A vectorised Python function for SQL: ``fn`` takes one pyarrow Array for each
    of ``input_types`` (pyarrow types) and returns an Array (or values pyarrow can
    make one of) of ``return_type``, as long as its inputs. ``session.register_udf``
    makes it callable by ``name`` (the function's own name by default). It runs in
    Python processes beside the workers, never in this one, and travels there pickled
    by cloudpickle (with the code of this program's own modules; installed packages
    must be installed on the workers too)."""
    import pyarrow as pa

    from ._pickle import dumps

    name = name or getattr(fn, "__name__", "")
    if not name.isidentifier() or name != name.lower():
        raise DroveError(
            f"udf: {name!r} is no name SQL can call as written; pass name='my_function' "
            "(lower case: SQL folds unquoted names to it)"
        )
    if not input_types:
        raise DroveError("udf: give the types of its arguments, one or more, e.g. [pa.int64()]")
    fields = [pa.field(f"a{i}", t) for i, t in enumerate(input_types)]
    schema = pa.schema([*fields, pa.field("result", return_type)])
    sink = pa.BufferOutputStream()
    pa.ipc.new_stream(sink, schema).close()
    return Udf(name, dumps(fn), sink.getvalue().to_pybytes())
