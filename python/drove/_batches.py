"""``DataFrame.map_batches``: a function over record batches, run as a Python UDF that
takes every column and returns one struct column of the result's columns."""

import itertools

import pyarrow as pa

from . import udf

_names = itertools.count(1)


def udf_for(fn, input_stream: bytes, schema):
    """A UDF that hands ``fn`` each batch (a ``pyarrow.RecordBatch`` of the columns the
    Arrow IPC stream ``input_stream`` declares) and returns what it gives back (a
    RecordBatch, Table or pandas DataFrame with the columns of ``schema``, else of the
    input, and a row for each row) as one struct column."""
    given = pa.ipc.open_stream(input_stream).schema
    out = schema if schema is not None else given
    if not isinstance(out, pa.Schema):
        raise TypeError(f"map_batches: schema must be a pyarrow.Schema, not {type(out).__name__}")
    # Every field may hold nulls: the struct's type must be the same on both sides.
    fields = [pa.field(f.name, f.type, nullable=True) for f in out]

    def batches(*columns):
        batch = pa.RecordBatch.from_arrays(list(columns), schema=given)
        result = fn(batch)
        if not isinstance(result, (pa.RecordBatch, pa.Table)):
            result = pa.Table.from_pandas(result, preserve_index=False)
        if result.num_rows != batch.num_rows:
            raise ValueError(
                f"map_batches: the function returned {result.num_rows} rows for "
                f"{batch.num_rows}; it must return a row for each row it is given "
                "(filter afterwards to drop rows)"
            )
        arrays = []
        for field in fields:
            if field.name not in result.column_names:
                raise ValueError(
                    f"map_batches: the function's result has no column {field.name!r}; "
                    f"pass schema= with the columns it returns ({result.column_names})"
                )
            column = result.column(field.name)
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            arrays.append(column.cast(field.type))
        return pa.StructArray.from_arrays(arrays, fields=fields)

    return udf(batches, list(given.types), pa.struct(fields), name=f"map_batches_{next(_names)}")
