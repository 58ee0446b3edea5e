"""drove's Python package side of `cargo xtask bench`: runs one workload with the wheel
(`import drove`) on an embedded cluster and prints `RESULT {json}` with the run times.
Outputs go where the spec says, for xtask to check. With `in_turns` in the spec, each
step waits for a line on stdin first and prints `TURN DONE` after (see xtask's
measure.rs), so that it takes turns with the engine it is compared with.

Usage: python drove_bench.py '<json spec>'
"""
import contextlib
import json
import os
import re
import sys
import time

import drove

TURN_DONE = "TURN DONE"
WORD = re.compile(r"[^\W_]+")


def main():
    spec = json.loads(sys.argv[1])
    turn = taking_turns if spec.get("in_turns") else contextlib.nullcontext
    with turn():
        session = drove.local(spec["workers"], progress=None, slots=spec["slots"])
    try:
        result = globals()[f"run_{spec['workload']}"](session, spec, turn)
    finally:
        with turn():
            session.shutdown()
    print("RESULT " + json.dumps(result), flush=True)


@contextlib.contextmanager
def taking_turns():
    sys.stdin.readline()
    try:
        yield
    finally:
        print(TURN_DONE, flush=True)


def timed(spec, turn, step):
    times = []
    for _ in range(spec["iterations"]):
        with turn():
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        if times[-1] > spec.get("max_seconds", float("inf")):
            break
    return {"times": times}


def run_tpch(session, spec, turn):
    """The spec's TPC-H queries, each collected to pyarrow; the last run's rows are
    written as JSON for xtask to check."""
    with turn():
        session.register_tpch(spec["data"])
    times, errors = {}, {}
    for q in spec["queries"]:
        text = open(os.path.join(spec["query_dir"], f"q{q}.sql")).read()
        ms = []
        try:
            for i in range(spec["iterations"]):
                with turn():
                    started = time.perf_counter()
                    table = session.sql(text).collect()
                    ms.append((time.perf_counter() - started) * 1000.0)
                    # In the turn, as the Rust engine writes its answer in its own.
                    if i + 1 == spec["iterations"]:
                        rows = [[cell(v) for v in r.values()] for r in table.to_pylist()]
                        with open(os.path.join(spec["output"], f"q{q}.json"), "w") as f:
                            json.dump(rows, f)
        except drove.DroveError as e:
            errors[f"q{q}"] = str(e)
            continue
        times[f"q{q}"] = ms
    return {"times": times, "errors": errors}


def cell(v):
    if v is None or isinstance(v, (int, float, str, bool)):
        return v
    return str(v)


def words(line):
    for word in WORD.findall(line):
        yield word.lower(), 1


def total(word, counts):
    return sum(counts)


def run_wordcount(session, spec, turn):
    """Word count with map and reduce functions in Python."""

    def count():
        session.mapreduce(
            spec["input"],
            spec["output"],
            mapper=words,
            reducer=total,
            combiner=total,
            reducers=spec["workers"] * spec["slots"],
            overwrite=True,
        )

    return timed(spec, turn, count)


def run_tasks(session, spec, turn):
    """`n` tiny tasks submitted one by one and gathered, as Dask's client runs them."""
    n = spec["tasks"]
    client = session.client()

    def run():
        futures = client.map(lambda x: x + 1, range(n))
        with open(spec["output"], "w") as f:
            f.write(str(sum(client.gather(futures))))

    return timed(spec, turn, run)


def run_udf(session, spec, turn):
    """A vectorised Python UDF over every row of the spec's Parquet files, summed."""
    import pyarrow as pa
    import pyarrow.compute as pc

    session.register_udf(
        drove.udf(lambda v: pc.add(pc.multiply(v, 3), 1), [pa.int64()], pa.int64(), name="affine")
    )
    session.register_parquet("numbers", spec["input"])

    def run():
        got = session.sql("select sum(affine(v)) as s from numbers").collect()
        with open(spec["output"], "w") as f:
            f.write(str(got.column("s")[0].as_py()))

    return timed(spec, turn, run)


if __name__ == "__main__":
    main()
