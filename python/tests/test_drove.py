"""The Python package against real clusters: embedded ones (drove.local) and one run
by the wheel's own `drove` command, reached with drove.connect."""

import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest

import drove
from conftest import cluster_processes, drove_command, free_port

REPO = Path(__file__).resolve().parents[2]
QUERIES = REPO / "queries" / "tpch"
TPCH_SCALE = os.environ.get("DROVE_PY_TPCH_SCALE", "0.1")


def without_views(table):
    """`table` with its string views as plain strings, which pyarrow's CSV writer takes."""
    fields = [
        pa.field(f.name, pa.string() if f.type == pa.string_view() else f.type)
        for f in table.schema
    ]
    return table.cast(pa.schema(fields))


def sorted_frame(df):
    return df.sort_values(list(df.columns)).reset_index(drop=True)


@pytest.fixture(scope="module")
def sales(tmp_path_factory):
    """A Parquet file of 1,000 sales, and the same rows in pandas."""
    n = 1000
    table = pa.table(
        {
            "id": list(range(n)),
            "region": [["north", "south", "east", "west"][i % 4] for i in range(n)],
            "amount": [float(i % 97) * 1.5 for i in range(n)],
        }
    )
    path = tmp_path_factory.mktemp("sales") / "sales.parquet"
    pq.write_table(table, path, row_group_size=100)
    return path, table.to_pandas()


def test_the_readme_line_works():
    s = drove.local(2)
    try:
        frame = s.sql("select 1 as x").to_pandas()
    finally:
        s.shutdown()
    assert frame.to_dict("list") == {"x": [1]}


def test_the_wheel_puts_the_cli_on_the_path():
    done = subprocess.run([drove_command(), "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Usage: drove" in done.stdout
    bad = subprocess.run([drove_command(), "no-such-command"], capture_output=True, text=True)
    assert bad.returncode != 0
    assert "no-such-command" in bad.stderr


def test_dataframe_operations_equal_pandas(session, sales):
    path, rows = sales
    session.register_parquet("sales", str(path))
    df = session.sql("select * from sales")
    assert df.columns == ["id", "region", "amount"]
    assert df.count() == len(rows)

    totals = (
        df.filter("amount > 10")
        .with_column("double", "amount * 2")
        .group_by("region")
        .agg("count(*) AS n", "sum(double) AS total")
        .sort("region DESC")
        .to_pandas()
    )
    big = rows[rows.amount > 10].assign(double=lambda r: r.amount * 2)
    expected = (
        big.groupby("region")
        .agg(n=("id", "size"), total=("double", "sum"))
        .reset_index()
        .sort_values("region", ascending=False)
        .reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(totals, expected, check_dtype=False)

    top = df.select("id", "amount").sort("amount DESC", "id").limit(5, offset=2).to_pandas()
    want = rows.sort_values(["amount", "id"], ascending=[False, True])[["id", "amount"]]
    pd.testing.assert_frame_equal(top, want.iloc[2:7].reset_index(drop=True), check_dtype=False)

    regions = df.select("region").distinct().sort("region").collect()
    assert isinstance(regions, pa.Table)
    assert regions.column("region").to_pylist() == ["east", "north", "south", "west"]

    twice = df.union(df).count()
    assert twice == 2 * len(rows)
    assert df.union(df, distinct=True).count() == len(rows)

    codes = pd.DataFrame({"region": ["north", "south", "up"], "code": ["N", "S", "U"]})
    names = session.sql(
        "select * from (values ('north', 'N'), ('south', 'S'), ('up', 'U')) as t(region, code)"
    )
    small = df.filter("id < 8")
    for how in ["inner", "left", "right", "full"]:
        joined = small.join(names, on="region", how=how)
        assert joined.columns == ["id", "region", "amount", "code"], how
        got = sorted_frame(joined.select("region", "code", "id").to_pandas())
        want = rows[rows.id < 8].merge(codes, on="region", how="outer" if how == "full" else how)
        want = sorted_frame(want[["region", "code", "id"]])
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
    kept = df.join(names, left_on="region", right_on="region", how="anti").count()
    assert kept == len(rows[~rows.region.isin(["north", "south"])])
    # Both sides of one table: the right side gets a name of its own.
    pairs = df.join(df, left_on="id", right_on="id").count()
    assert pairs == len(rows)
    other = session.read_parquet(str(path))
    assert session.read_parquet(str(path)).join(other, on="id").count() == len(rows)

    spaced = df.select("region || '  x' AS r").distinct().sort("r  DESC NULLS LAST").collect()
    assert spaced.column("r").to_pylist() == [f"{r}  x" for r in ["west", "south", "north", "east"]]

    plan = df.group_by("region").agg("sum(amount)").explain()
    assert "Stage 0:" in plan and "Stage 1:" in plan, plan

    cached = df.filter("region = 'east'").cache()
    assert cached.count() == len(rows[rows.region == "east"])
    assert cached.unpersist() is True
    assert df.unpersist() is False


@pytest.fixture(scope="module")
def sales_files(tmp_path_factory, sales):
    """The sales in four files, which scans read in four tasks."""
    _, rows = sales
    out = tmp_path_factory.mktemp("sales-files")
    table = pa.Table.from_pandas(rows, preserve_index=False)
    for part in range(4):
        pq.write_table(table.slice(part * 250, 250), out / f"part-{part}.parquet")
    return out


def test_a_python_udf_equals_the_same_computation_in_sql(session, sales, sales_files):
    import pyarrow.compute as pc

    session.register_parquet("sales_parts", str(sales_files))
    double = drove.udf(lambda a: pc.multiply(a, 2), [pa.float64()], pa.float64(), name="twice")
    session.register_udf(double)
    label = drove.udf(lambda r, a: [f"{x}:{y}" for x, y in zip(r.to_pylist(), a.to_pylist())],
                      [pa.string(), pa.float64()], pa.string(), name="label")
    session.register_udf(label)
    ours = session.sql(
        "select id, twice(amount) AS d, label(region, amount) AS l from sales_parts"
    ).sort("id").to_pandas()
    sql = session.sql("select id, amount * 2 AS d from sales_parts").sort("id").to_pandas()
    assert len(ours) == 1000
    pd.testing.assert_frame_equal(ours[["id", "d"]], sql, check_dtype=False)
    rows = sales[1]
    assert ours.l.tolist() == [f"{r}:{a}" for r, a in zip(rows.region, rows.amount)]

    # One function under two signatures: each runs with its own types.
    def same(a):
        return a

    session.register_udf(drove.udf(same, [pa.int64()], pa.int64(), name="same_int"))
    session.register_udf(drove.udf(same, [pa.float64()], pa.float64(), name="same_float"))
    both = session.sql("select same_int(id) AS i, same_float(amount) AS f from sales_parts")
    both = both.sort("i").to_pandas()
    assert both.i.tolist() == rows.id.tolist() and both.f.tolist() == rows.amount.tolist()


def test_map_batches_equals_the_same_computation_in_sql(session, sales_files):
    import pyarrow.compute as pc

    session.register_parquet("sales_batches", str(sales_files))
    df = session.sql("select id, region, amount from sales_batches")

    def tax(batch):
        return pa.RecordBatch.from_arrays(
            [batch.column("id"), pc.multiply(batch.column("amount"), 1.25)],
            names=["id", "taxed"],
        )

    schema = pa.schema([("id", pa.int64()), ("taxed", pa.float64())])
    ours = df.map_batches(tax, schema=schema).filter("taxed > 10").sort("id").to_pandas()
    sql = session.sql(
        "select id, amount * 1.25 AS taxed from sales_batches where amount * 1.25 > 10"
    ).sort("id").to_pandas()
    assert len(sql) > 0
    pd.testing.assert_frame_equal(ours, sql, check_dtype=False)

    # Without a schema the result has the input's columns; pandas results work too.
    upper = df.map_batches(lambda b: b.to_pandas().assign(region=lambda f: f.region.str.upper()))
    assert upper.columns == ["id", "region", "amount"]
    regions = upper.select("region").distinct().sort("region").collect()
    assert regions.column("region").to_pylist() == ["EAST", "NORTH", "SOUTH", "WEST"]

    with pytest.raises(drove.JobFailed, match="a row for each row"):
        df.map_batches(lambda b: b.slice(0, 1)).collect()
    with pytest.raises(drove.JobFailed, match="has no column 'taxed'"):
        df.map_batches(lambda b: b, schema=schema).collect()
    with pytest.raises(TypeError, match="pyarrow.Schema"):
        df.map_batches(lambda b: b, schema="id int")


def meeting(seen, which):
    """A UDF that marks `os.<which>()` of the process running it in the directory
    `seen`, waits (bounded) until two different marks are there, then returns the mark
    for each row: overlapping tasks meet, so two processes (or workers) compute it."""

    def mark(a):
        import os as os_
        import time as time_
        from pathlib import Path

        me = getattr(os_, which)()
        (Path(str(seen)) / str(me)).touch()
        deadline = time_.monotonic() + 60
        while len(list(Path(str(seen)).iterdir())) < 2 and time_.monotonic() < deadline:
            time_.sleep(0.01)
        return pa.array([me] * len(a), pa.int64())

    return mark


def test_python_udfs_run_in_python_processes_not_in_the_client(session, sales_files, tmp_path):
    session.register_parquet("sales_pids", str(sales_files))
    seen = tmp_path / "pids"
    seen.mkdir()

    where = meeting(seen, "getpid")
    session.register_udf(drove.udf(where, [pa.int64()], pa.int64(), name="where_run"))
    pids = session.sql("select distinct where_run(id) AS pid from sales_pids").collect()
    pids = set(pids.column("pid").to_pylist())
    assert len(pids) >= 2, pids
    assert os.getpid() not in pids


@pytest.fixture(scope="module")
def worker_processes(tmp_path_factory):
    """A coordinator and two worker processes, each run by the wheel's drove command:
    the coordinator's address and the workers' process ids, once both registered."""
    with cluster_processes(tmp_path_factory.mktemp("processes"), workers=2) as (address, workers):
        yield address, {w.pid for w in workers}


def test_python_udfs_run_beside_two_worker_processes(worker_processes, sales_files, tmp_path):
    address, worker_pids = worker_processes
    seen = tmp_path / "workers"
    seen.mkdir()

    # The four scan tasks fill both workers' two slots at once.
    parent = meeting(seen, "getppid")

    with drove.connect(address) as s:
        s.register_parquet("sales_workers", str(sales_files))
        s.register_udf(drove.udf(parent, [pa.int64()], pa.int64(), name="worker_of"))
        found = s.sql("select distinct worker_of(id) AS pid from sales_workers").collect()
    assert set(found.column("pid").to_pylist()) == worker_pids


def test_a_udf_that_raises_or_dies_fails_the_job_clearly(session, sales_files):
    session.register_parquet("sales_bad", str(sales_files))

    def explode(a):
        raise ValueError("no such amount")

    session.register_udf(drove.udf(explode, [pa.float64()], pa.float64()))
    with pytest.raises(drove.JobFailed, match="(?s)explode raised.*Traceback.*ValueError: no such amount"):
        session.sql("select explode(amount) from sales_bad").collect()

    session.register_udf(drove.udf(lambda a: os._exit(3), [pa.float64()], pa.float64(), name="die"))
    with pytest.raises(drove.JobFailed, match=r"failed \d+ times.*die failed: its Python process ended"):
        session.sql("select die(amount) from sales_bad").collect()

    session.register_udf(drove.udf(lambda a: [1, 2], [pa.float64()], pa.int64(), name="short"))
    with pytest.raises(drove.JobFailed, match="one value for each row"):
        session.sql("select short(amount) from sales_bad").collect()

    with pytest.raises(drove.DroveError, match="name="):
        drove.udf(lambda a: a, [pa.int64()], pa.int64())
    with pytest.raises(drove.DroveError, match="lower case"):
        drove.udf(explode, [pa.int64()], pa.int64(), name="Explode")
    with pytest.raises(drove.DroveError, match="types of its arguments"):
        drove.udf(explode, [], pa.int64())


def run_python(code, **env):
    """`code` run by this Python in a process of its own, with `env` added to its
    environment (which a running cluster's threads read, so no test changes its own)."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tempfile.gettempdir(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


UDF_SCRIPT = """
import os, sys, pyarrow as pa, drove
s = drove.Session.local(2, None) if os.environ.get("BARE") else drove.local(2, None)
s.register_parquet("t", {path!r})
s.register_udf(drove.udf({function}, [pa.float64()], pa.int64(), name="f"))
try:
    s.sql("select f(amount) from t").collect()
    print("ran")
except drove.JobFailed as e:
    print(e)
s.shutdown()
"""


def test_each_python_process_has_a_memory_limit(sales_files):
    hoard = "lambda a: pa.array([len(bytearray(1 << 30))] * len(a), pa.int64())"
    script = UDF_SCRIPT.format(path=str(sales_files), function=hoard)
    said = run_python(script, DROVE_PYTHON_MEMORY="256MiB")
    assert "f raised" in said and "MemoryError" in said, said
    said = run_python(script, DROVE_PYTHON_MEMORY="lots")
    assert "DROVE_PYTHON_MEMORY=lots" in said, said
    assert run_python(script).strip() == "ran"


def test_workers_run_python_functions_only_where_drove_python_is_set(sales_files):
    script = UDF_SCRIPT.format(
        path=str(sales_files), function="lambda a: pa.array([1] * len(a), pa.int64())"
    )
    env = {k: v for k, v in os.environ.items() if k != "DROVE_PYTHON"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "BARE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tempfile.gettempdir(),
    )
    assert "runs no Python functions" in done.stdout and "DROVE_PYTHON" in done.stdout, done


def test_show_prints_a_table(session, sales, capsys):
    path, _ = sales
    session.register_parquet("sales_shown", str(path))
    session.sql("select region, amount from sales_shown order by id").show(3)
    out = capsys.readouterr().out
    assert "region" in out and "north" in out
    assert len([line for line in out.splitlines() if line.startswith("| ")]) == 4


def test_progress_shows_on_stderr_for_jobs_past_the_threshold(sales, capsys):
    path, _ = sales
    with drove.local(2, progress=0) as s:
        s.register_parquet("sales", str(path))
        s.sql("select region, count(*) from sales group by region").collect()
        shown = capsys.readouterr().err
    assert "stages" in shown and "tasks" in shown and "ended" in shown, shown
    with drove.local(2, progress=None) as s:
        s.register_parquet("sales", str(path))
        s.sql("select region, count(*) from sales group by region").collect()
        assert capsys.readouterr().err == ""
    with pytest.raises(drove.DroveError, match="progress=-1"):
        drove.local(2, progress=-1)


def test_bad_input_raises_drove_errors(session, sales, tmp_path):
    with pytest.raises(drove.QueryError, match="(?i)no_such_table"):
        session.sql("select * from no_such_table")
    with pytest.raises(drove.QueryError, match="selec"):
        session.sql("selec 1")
    missing = tmp_path / "missing.parquet"
    with pytest.raises(drove.QueryError, match="missing.parquet"):
        session.register_parquet("t", str(missing))
    with pytest.raises(drove.DroveError, match="at least one worker"):
        drove.local(0)
    one = session.sql("select 1 as x")
    with pytest.raises(drove.DroveError, match="cannot read the expression"):
        one.filter("x >")
    with pytest.raises(drove.DroveError, match="how"):
        one.join(one, on="x", how="sideways")
    with pytest.raises(drove.DroveError, match="on="):
        one.join(one)
    with pytest.raises(drove.DroveError, match="Cannot cast string 'x'"):
        session.sql("select cast('x' as int) as y").collect()
    # A failure on the workers, with their message.
    with pytest.raises(drove.JobFailed, match="(?s)job .* failed.*Cannot cast string 'north'"):
        session.read_parquet(str(sales[0])).select("cast(region AS int)").collect()
    with pytest.raises(drove.DroveError, match="sort key"):
        one.sort("DESC")
    with pytest.raises(drove.DroveError, match="no key column"):
        one.join(one, on="nope")
    with pytest.raises(drove.DroveError, match="tls_dir"):
        drove.connect("127.0.0.1:1", tls_dir=str(tmp_path / "no-certs"))
    # Nothing listens on a port this test just had and closed.
    with pytest.raises(drove.ConnectionFailed, match="cannot reach the coordinator"):
        drove.connect(f"127.0.0.1:{free_port()}")


@pytest.fixture(scope="module")
def tpch(tmp_path_factory):
    out = tmp_path_factory.mktemp("tpch")
    subprocess.run(
        [drove_command(), "gen", "tpch", "--scale", TPCH_SCALE, "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    """`drove local` run by the wheel's command; its gRPC address once it answers."""
    grpc, http = free_port(), free_port()
    log = open(tmp_path_factory.mktemp("cli") / "local.log", "w")
    process = subprocess.Popen(
        [
            drove_command(),
            "local",
            "--workers",
            "2",
            "--bind",
            f"127.0.0.1:{grpc}",
            "--http",
            f"127.0.0.1:{http}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    address = f"127.0.0.1:{grpc}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                drove.connect(address).shutdown()
                break
            except drove.DroveError:
                assert process.poll() is None, "drove local exited; see its log"
                assert time.monotonic() < deadline, "drove local did not answer in 120 s"
                time.sleep(0.2)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def test_tpch_from_python_equals_the_cli(tpch, cli_cluster):
    answered = 0
    with drove.connect(cli_cluster) as s:
        s.register_tpch(str(tpch))
        for number in range(1, 23):
            text = (QUERIES / f"q{number}.sql").read_text()
            ours = s.sql(text).collect()
            cli = subprocess.run(
                [
                    drove_command(),
                    "sql",
                    "--coordinator",
                    cli_cluster,
                    "--tpch",
                    str(tpch),
                    "--format",
                    "csv",
                    "--no-progress",
                    "-e",
                    text,
                ],
                capture_output=True,
                text=True,
            )
            assert cli.returncode == 0, f"Q{number}: {cli.stderr}"
            theirs = pd.read_csv(io.StringIO(cli.stdout))
            sink = pa.BufferOutputStream()
            pyarrow.csv.write_csv(without_views(ours), sink)
            mine = pd.read_csv(io.StringIO(sink.getvalue().to_pybytes().decode()))
            answered += len(mine) > 0
            pd.testing.assert_frame_equal(
                sorted_frame(mine), sorted_frame(theirs), check_dtype=False, rtol=1e-9
            )
    # Equal empty answers would prove little: at this scale nearly every query has rows.
    assert answered >= 20, f"only {answered} of 22 queries returned rows"


def test_write_parquet_writes_the_rows_whole_or_not_at_all(session, sales, tmp_path):
    path, frame = sales
    df = session.read_parquet(str(path)).filter("amount > 10").select("id", "region", "amount")
    out = tmp_path / "big.parquet"
    assert df.write_parquet(str(out)) == len(frame[frame.amount > 10])
    # Readable as any file the user makes: its mode is what the umask leaves of 0o666.
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask
    written = pq.read_table(out).to_pandas()
    pd.testing.assert_frame_equal(
        sorted_frame(written), sorted_frame(df.to_pandas()), check_dtype=False
    )

    with pytest.raises(drove.DroveError, match="exists; pass overwrite"):
        df.write_parquet(str(out))
    assert df.limit(5).write_parquet(str(out), overwrite=True) == 5
    assert pq.read_table(out).num_rows == 5
    with pytest.raises(drove.DroveError, match="is a directory"):
        df.write_parquet(str(tmp_path))
    with pytest.raises(drove.DroveError, match="does not exist; create it first"):
        df.write_parquet(str(tmp_path / "no" / "such.parquet"))

    # A job that fails leaves neither the file nor a temporary one behind.
    def explode(a):
        raise RuntimeError("no rows today")

    session.register_udf(drove.udf(explode, [pa.int64()], pa.int64(), name="explode_write"))
    failing = session.read_parquet(str(path)).select("explode_write(id) AS x")
    with pytest.raises(drove.JobFailed, match="no rows today"):
        failing.write_parquet(str(tmp_path / "failed.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.parquet"]
