"""Task graphs (``session.client()``): results equal running the functions here, the
functions run in the workers' Python processes, a lost worker's tasks are re-run, and
failures and bad input are reported clearly."""

import collections
import os
import signal
import threading
import time

import pytest

import drove
from conftest import cluster_processes


def square(i, marks):
    """i squared, and the process that computed it (marked in `marks`, named by its
    parent: the drove worker)."""
    import os as os_
    import time as time_
    from pathlib import Path as Path_

    Path_(marks, f"{os_.getppid()}-{i}").touch()
    time_.sleep(0.01)
    return i * i, os_.getpid(), os_.getppid()


def add(a, b):
    import os as os_

    return a[0] + b[0], os_.getpid(), os_.getppid()


def tree_sum(client_or_none, leaves):
    """Sums `leaves` pairwise, level by level: a future (or value) for the total, and
    every node made. Locally, `client_or_none` is None and nodes are values."""
    nodes = list(leaves)
    made = list(nodes)
    while len(nodes) > 1:
        paired = []
        for k in range(0, len(nodes) - 1, 2):
            if client_or_none is None:
                paired.append(add(nodes[k], nodes[k + 1]))
            else:
                paired.append(client_or_none.submit(add, nodes[k], nodes[k + 1]))
        if len(nodes) % 2:
            paired.append(nodes[-1])
        made.extend(paired[: len(nodes) // 2])
        nodes = paired
    return nodes[0], made


def graph(client_or_none, leaves):
    """`leaves` and their pairwise sums, then the total once more: for 500 leaves,
    1,000 submits, 11 levels deep. Its last node, and every node made."""
    total, made = tree_sum(client_or_none, leaves)
    last = add(total, (0, 0, 0)) if client_or_none is None else client_or_none.submit(add, total, (0, 0, 0))
    return last, [*made, last]


@pytest.fixture
def three_workers(tmp_path):
    """A coordinator that declares a silent worker lost after 3 s, and three workers."""
    logs = tmp_path / "logs"
    logs.mkdir()
    with cluster_processes(logs, workers=3, coordinator_args=["--heartbeat-timeout-ms", "3000"]) as cluster:
        yield cluster


def test_a_task_graph_survives_a_killed_worker_and_equals_local_results(three_workers, tmp_path):
    address, workers = three_workers
    marks = tmp_path / "marks"
    marks.mkdir()
    victim = workers[0]

    def kill_once_the_victim_runs_tasks():
        # The victim is killed while its Python processes compute the graph's leaves.
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if any(p.name.startswith(f"{victim.pid}-") for p in marks.iterdir()):
                os.kill(victim.pid, signal.SIGKILL)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_once_the_victim_runs_tasks)
    killer.start()
    with drove.connect(address) as s:
        client = s.client()
        last, made = graph(client, client.map(square, range(500), [str(marks)] * 500))
        assert len(made) == 1000
        leaves = client.gather(made[:500])
        value, _, _ = last.result()
        killer.join()
        jobs = list(client.jobs)
        nodes = client.gather(made)

    # The same functions run here, on the same graph.
    here = tmp_path / "here"
    here.mkdir()
    expected_last, expected = graph(None, [square(i, str(here)) for i in range(500)])
    assert value == expected_last[0] == sum(i * i for i in range(500))
    assert [v for v, _, _ in nodes] == [v for v, _, _ in expected]
    assert [v for v, _, _ in leaves] == [i * i for i in range(500)]
    assert victim.wait(timeout=60) == -signal.SIGKILL

    # Every function ran in a Python process beside a drove worker, never here; the
    # leaves' wave lost the victim's tasks and drove ran them again.
    parents = {ppid for _, _, ppid in nodes}
    pids = {pid for _, pid, _ in nodes}
    assert os.getpid() not in pids
    assert parents <= {w.pid for w in workers}, (parents, [w.pid for w in workers])
    assert len(parents - {victim.pid}) == 2, parents
    assert jobs[0]["graph_tasks"] == 500
    assert sum(j["extra_attempts"] for j in jobs) >= 1, jobs
    # A job per level of depth, not per task.
    assert len(jobs) == 11, jobs


def test_futures_gather_as_completed_and_failures(session, tmp_path):
    client = session.client()
    marks = tmp_path / "marks"
    marks.mkdir()

    futures = client.map(square, range(20), [str(marks)] * 20)
    seen = [f.result()[0] for f in client.as_completed(futures)]
    assert sorted(seen) == [i * i for i in range(20)]
    assert all(f.done() for f in futures)

    # Futures inside lists and dicts are arguments too, and gather keeps the shape.
    summed = client.submit(lambda xs, d: sum(x[0] for x in xs) + d["k"][0], futures[:3], {"k": futures[3]})
    assert client.gather({"s": summed, "l": [futures[2]]})["s"] == 0 + 1 + 4 + 9
    assert client.gather({"s": summed, "l": [futures[2]]})["l"][0][0] == 4

    def fails(x):
        raise ValueError(f"bad input {x}")

    failed = client.submit(fails, 7)
    after = client.submit(lambda v: v, failed)
    fine = client.submit(lambda: "still runs")
    with pytest.raises(ValueError, match="bad input 7") as raised:
        failed.result()
    assert isinstance(raised.value.__cause__, drove.TaskError)
    assert "in fails" in str(raised.value.__cause__)
    with pytest.raises(ValueError, match="bad input 7"):
        after.result()
    assert isinstance(failed.exception(), ValueError)
    assert fine.result() == "still runs"
    with pytest.raises(ValueError, match="bad input 7"):
        client.gather([fine, after])

    # A task that exits fails alone; the rest of its wave runs.
    exits = client.submit(lambda: __import__("sys").exit(3))
    beside = client.submit(lambda: 7)
    with pytest.raises(SystemExit):
        exits.result()
    assert beside.result() == 7

    # A result that cannot be pickled fails its task, saying so.
    unpicklable = client.submit(lambda: threading.Lock())
    with pytest.raises(drove.TaskError, match="could not be pickled"):
        unpicklable.result()


def test_task_graph_bad_input(session):
    client = session.client()
    with pytest.raises(TypeError, match="not callable"):
        client.submit(42, 1)
    with pytest.raises(ValueError, match="partitions"):
        session.client(partitions=0)
    other = session.client().submit(len, "abc")
    with pytest.raises(ValueError, match="belongs to another client"):
        client.submit(len, other)
    big = client.submit(len, b"x" * (9 << 20))
    with pytest.raises(drove.TaskError, match="keep large data in files"):
        big.result()


def test_waves_split_into_jobs_and_arguments_pass_unchanged(session, monkeypatch):
    client = session.client()
    # A wave of 10 tasks in jobs of at most 3.
    monkeypatch.setattr(drove._tasks, "JOB_TASKS_MAX", 3)
    squares = client.map(lambda x: x * x, range(10))
    assert client.gather(squares) == [x * x for x in range(10)]
    assert [j["graph_tasks"] for j in client.jobs] == [3, 3, 3, 1]

    # as_completed across waves: a chain finishes a link at a time.
    first = client.submit(lambda: 1)
    second = client.submit(lambda a: a + 1, first)
    third = client.submit(lambda b: b + 1, second)
    assert [f.result() for f in client.as_completed([third, first, second])] == [1, 2, 3]

    # Arguments without futures arrive as they were given, subclasses and all.
    counts = collections.Counter("hello")
    lists = collections.defaultdict(list, {"a": [1]})
    got = client.submit(lambda c, d: (c, d, type(c).__name__, type(d).__name__), counts, lists).result()
    assert got == (counts, lists, "Counter", "defaultdict")
    # A dict subclass holding a future keeps its type.
    holder = collections.OrderedDict(x=first)
    assert client.submit(lambda h: (type(h).__name__, h["x"]), holder).result() == ("OrderedDict", 1)
