"""PySpark side of `cargo xtask bench`: runs one workload in local mode and prints
`RESULT {json}` with the run times. Outputs go where the spec says, for xtask to check.

Usage: python spark_bench.py '<json spec>'
"""
import json
import os
import re
import sys
import time


def main():
    spec = json.loads(sys.argv[1])
    from pyspark.sql import SparkSession

    cores = spec["workers"] * spec["slots"]
    spark = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("drove-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(cores))
        .config("spark.default.parallelism", str(cores))
        .config("spark.driver.memory", "4g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    try:
        result = globals()[f"run_{spec['workload']}"](spark, spec)
    finally:
        spark.stop()
    print("RESULT " + json.dumps(result), flush=True)


def timed(spec, f):
    times = []
    for _ in range(spec["iterations"]):
        started = time.perf_counter()
        f()
        times.append(time.perf_counter() - started)
        if times[-1] > spec.get("max_seconds", float("inf")):
            break
    return {"times": times}


QUOTED_IDENTIFIER = re.compile(r'"([^"]*)"')


def run_queries(spark, spec):
    """The spec's queries over its tables (TPC-H or TPC-DS). A query Spark cannot run is
    reported under "errors" and the run goes on."""
    for table in spec["tables"]:
        spark.read.parquet(os.path.join(spec["data"], f"{table}.parquet")).createOrReplaceTempView(table)
    times, errors = {}, {}
    for q in spec["queries"]:
        text = open(os.path.join(spec["query_dir"], f"q{q}.sql")).read()
        statements = [s.strip() for s in text.split(";") if s.strip()]
        ms = []
        rows = None
        try:
            for _ in range(spec["iterations"]):
                started = time.perf_counter()
                for s in statements:
                    s = re.sub(r"(?i)^create view", "create or replace temporary view", s)
                    # Standard SQL quotes identifiers with double quotes (TPC-DS names
                    # columns "30 days"), Spark with backticks.
                    s = QUOTED_IDENTIFIER.sub(r"`\1`", s)
                    df = spark.sql(s)
                    if s.lower().startswith(("select", "with")):
                        rows = [[cell(v) for v in r] for r in df.collect()]
                ms.append((time.perf_counter() - started) * 1000.0)
        except Exception as e:  # noqa: BLE001 -- any query failure is reported, not fatal
            errors[f"q{q}"] = str(e).strip() or type(e).__name__
            continue
        with open(os.path.join(spec["output"], f"q{q}.json"), "w") as f:
            json.dump(rows, f)
        times[f"q{q}"] = ms
    return {"times": times, "errors": errors}


run_tpch = run_queries
run_tpcds = run_queries


def cell(v):
    if v is None:
        return None
    if isinstance(v, (int, float, str, bool)):
        return v
    return str(v)


WORD = re.compile(r"[^\W_]+")


def run_wordcount(spark, spec):
    return timed(spec, lambda: wordcount(spark, spec))


def wordcount(spark, spec):
    lines = spark.sparkContext.textFile(spec["input"])
    counts = (
        lines.flatMap(lambda l: [w.lower() for w in WORD.findall(l)])
        .map(lambda w: (w, 1))
        .reduceByKey(lambda a, b: a + b, numPartitions=spec["workers"] * spec["slots"])
    )
    out = spec["output"] + f".{time.time_ns()}"
    counts.map(lambda kv: f"{kv[0]}\t{kv[1]}").saveAsTextFile(out)
    replace(out, spec["output"])


def run_sort(spark, spec):
    return timed(spec, lambda: sort(spark, spec))


def sort(spark, spec):
    lines = spark.sparkContext.textFile(spec["input"])
    pairs = lines.map(lambda l: tuple(l.split("\t", 1)) if "\t" in l else (l, ""))
    ordered = pairs.sortBy(lambda kv: kv, numPartitions=spec["workers"] * spec["slots"])
    out = spec["output"] + f".{time.time_ns()}"
    ordered.map(lambda kv: f"{kv[0]}\t{kv[1]}").saveAsTextFile(out)
    replace(out, spec["output"])


def replace(new, old):
    """Spark will not write into an existing directory: write beside it, then swap."""
    import shutil

    if os.path.exists(old):
        shutil.rmtree(old)
    os.rename(new, old)


def run_tasks(spark, spec):
    n = spec["tasks"]

    def job():
        total = spark.sparkContext.parallelize(range(n), n).map(lambda x: x + 1).sum()
        with open(spec["output"], "w") as f:
            f.write(str(total))

    return timed(spec, job)


def run_udf(spark, spec):
    """A vectorised pandas UDF over every row of the spec's Parquet files, summed."""
    import pandas as pd
    from pyspark.sql.functions import pandas_udf, sum as sum_

    @pandas_udf("long")
    def affine(v: pd.Series) -> pd.Series:
        return v * 3 + 1

    numbers = spark.read.parquet(spec["input"])

    def job():
        total = numbers.select(sum_(affine("v"))).collect()[0][0]
        with open(spec["output"], "w") as f:
            f.write(str(total))

    return timed(spec, job)


if __name__ == "__main__":
    main()
