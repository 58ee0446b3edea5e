"""Dask side of `cargo xtask bench`: runs one workload on a distributed LocalCluster
and prints `RESULT {json}` with the run times. Outputs go where the spec says.

Usage: python dask_bench.py '<json spec>'
"""
import json
import os
import re
import shutil
import sys
import time

WORD = re.compile(r"[^\W_]+")


def words(line):
    return [w.lower() for w in WORD.findall(line)]


def main():
    spec = json.loads(sys.argv[1])
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=spec["workers"],
        threads_per_worker=spec["slots"],
        processes=True,
        dashboard_address=None,
    )
    client = Client(cluster)
    times = []
    try:
        for _ in range(spec["iterations"]):
            started = time.perf_counter()
            globals()[f"run_{spec['workload']}"](client, spec)
            times.append(time.perf_counter() - started)
            if times[-1] > spec.get("max_seconds", float("inf")):
                break
    finally:
        client.close()
        cluster.close()
    print("RESULT " + json.dumps({"times": times}), flush=True)


def fresh(path):
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)


def run_wordcount(client, spec):
    import dask.bag as db

    lines = db.read_text(os.path.join(spec["input"], "*.txt"), blocksize="64MiB")
    counts = lines.map(words).flatten().frequencies(split_every=8)
    fresh(spec["output"])
    counts.map(lambda kv: f"{kv[0]}\t{kv[1]}").to_textfiles(os.path.join(spec["output"], "part-*.txt"))


def run_sort(client, spec):
    import dask.dataframe as dd

    df = dd.read_csv(
        os.path.join(spec["input"], "*.txt"),
        sep="\t",
        header=None,
        names=["k", "v"],
        dtype=str,
        keep_default_na=False,
        quoting=3,
        blocksize="64MiB",
    )
    ordered = df.sort_values(["k", "v"])
    fresh(spec["output"])
    ordered.to_csv(
        os.path.join(spec["output"], "part-*.txt"),
        sep="\t",
        header=False,
        index=False,
        quoting=3,
        name_function=lambda i: f"{i:05d}",
    )


def run_tasks(client, spec):
    n = spec["tasks"]
    futures = client.map(lambda x: x + 1, range(n), pure=False)
    total = sum(client.gather(futures))
    with open(spec["output"], "w") as f:
        f.write(str(total))


if __name__ == "__main__":
    main()
