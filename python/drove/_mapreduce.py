"""``Session.mapreduce``: MapReduce jobs with map and reduce functions in Python, run by
drove's MapReduce machinery (its reading of input, shuffle, sort and committed output)
with the functions in the workers' Python processes, a batch at a time (see drove-exec's
mapreduce/python.rs for the exchange)."""

import inspect
import os

import pyarrow as pa

from . import DroveError, udf


def run(
    session,
    inputs,
    output,
    mapper=None,
    reducer=None,
    combiner=None,
    *,
    key_type=None,
    value_type=None,
    output_type=None,
    reducers=2,
    format="text",
    overwrite=False,
    job=None,
    args=None,
):
    """Runs a MapReduce job over the text files (or directories of them) ``inputs``
    and commits its output to the directory ``output``, which must not exist unless
    ``overwrite``: part files ``part-r-NNNNN`` and ``_SUCCESS``, written only once the
    whole job has succeeded. Returns ``{"files": [...], "records": n, "job": id,
    "shuffled_bytes": n}``.

    With Python functions:
      * ``mapper(line)`` yields (or returns a list of) ``(key, value)`` pairs for one
        line of input;
      * ``reducer(key, values)`` returns the key's output, or yields any number of
        outputs; each is written as ``key<TAB>output`` (text), or as a row;
      * ``combiner(key, values)``, optional, folds the values a map task emits for one
        key in a batch of lines into one value, before the shuffle.
    Keys are of ``key_type`` (default ``pa.string()``), values of ``value_type``
    (default ``pa.int64()``), outputs of ``output_type`` (default: ``value_type``).

    Or ``job=`` names a job built into drove ("wordcount", "inverted-index", "grep",
    "sort"), with ``args`` its parameters as a dict of strings.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [os.fspath(p) for p in inputs]
    if not inputs:
        raise DroveError("mapreduce: give one or more input files or directories")
    if not (isinstance(reducers, int) and reducers > 0):
        raise DroveError(f"mapreduce: reducers={reducers!r}; give a number of reduce tasks, 1 or more")
    if job is not None:
        if mapper is not None or reducer is not None or combiner is not None:
            raise DroveError(f"mapreduce: job={job!r} brings its own functions; pass job= or mapper= and reducer=, not both")
        if job == "python":
            raise DroveError("mapreduce: job='python' is what mapper= and reducer= run; pass those instead")
        args = {str(k): str(v) for k, v in (args or {}).items()}
        return session._mapreduce(job, inputs, os.fspath(output), reducers, format, overwrite, args)
    if args:
        raise DroveError("mapreduce: args= are a built-in job's parameters; Python functions take theirs from their closure")
    if not callable(mapper) or not callable(reducer):
        raise DroveError(
            "mapreduce: give mapper(line) and reducer(key, values) functions, or job= a built-in job's name"
        )
    if combiner is not None and not callable(combiner):
        raise DroveError("mapreduce: combiner must be a function combiner(key, values), or None")
    key_type = pa.string() if key_type is None else key_type
    value_type = pa.int64() if value_type is None else value_type
    output_type = value_type if output_type is None else output_type
    for name, t in [("key_type", key_type), ("value_type", value_type), ("output_type", output_type)]:
        if not isinstance(t, pa.DataType):
            raise DroveError(f"mapreduce: {name} must be a pyarrow type such as pa.string(), not {t!r}")
    mapped = pairs(key_type, value_type)
    reduced = pairs(key_type, output_type)
    map_udf = udf(map_lines(mapper, combiner, mapped), [pa.string()], mapped, name="mapreduce_map")
    reduce_udf = udf(
        reduce_keys(reducer, reduced), [key_type, value_type, pa.bool_()], reduced, name="mapreduce_reduce"
    )
    return session._mapreduce(
        "python", inputs, os.fspath(output), reducers, format, overwrite, {}, map_udf, reduce_udf
    )


def pairs(key_type, value_type):
    """The type the functions return for each row: a list of ``{key, value}``."""
    return pa.list_(pa.struct([pa.field("key", key_type), pa.field("value", value_type)]))


def lists(offsets, keys, values, returns):
    """A list array of ``returns``: row i holds the pairs offsets[i]..offsets[i+1]."""
    item = returns.value_type
    fields = [item.field(0), item.field(1)]
    structs = pa.StructArray.from_arrays(
        [pa.array(keys, fields[0].type), pa.array(values, fields[1].type)], fields=fields
    )
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), structs, type=returns)


def map_lines(mapper, combiner, returns):
    """The map UDF: a batch of lines in, each line's pairs out (with a combiner, the
    batch's combined pairs, all in the first line's list)."""

    def map_batch(lines):
        keys, values, offsets = [], [], [0]
        if combiner is None:
            for line in lines.to_pylist():
                for key, value in mapper(line):
                    keys.append(key)
                    values.append(value)
                offsets.append(len(keys))
        else:
            held = {}
            for line in lines.to_pylist():
                for key, value in mapper(line):
                    held.setdefault(key, []).append(value)
            for key, vs in held.items():
                keys.append(key)
                values.append(vs[0] if len(vs) == 1 else combiner(key, vs))
            offsets.extend([len(keys)] * len(lines))
        return lists(offsets, keys, values, returns)

    return map_batch


def reduce_keys(reducer, returns):
    """The reduce UDF: pairs sorted by key in (whole keys, each one's first pair marked
    in ``starts``), each key's outputs out in the list of its first pair."""

    def reduce_batch(keys_in, values_in, starts_in):
        ks, vs, starts = keys_in.to_pylist(), values_in.to_pylist(), starts_in.to_pylist()
        keys, outputs, offsets = [], [], [0]
        start = 0
        while start < len(ks):
            end = start + 1
            while end < len(ks) and not starts[end]:
                end += 1
            result = reducer(ks[start], vs[start:end])
            for output in result if inspect.isgenerator(result) else [result]:
                keys.append(ks[start])
                outputs.append(output)
            offsets.extend([len(keys)] * (end - start))
            start = end
        return lists(offsets, keys, outputs, returns)

    return reduce_batch
