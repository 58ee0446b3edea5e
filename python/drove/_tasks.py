"""Task graphs: plain Python functions run as tasks on the workers, as Dask's and
Ray's futures run them.

``submit`` only records a task. When a result is asked for (``result``, ``gather``,
``as_completed``), the client runs the graph in waves: every recorded task whose
arguments are ready goes into one drove job, a query over a table of the tasks'
pickled calls that a Python UDF answers on the workers' Python processes. A task whose
arguments are other tasks' futures waits for the wave after theirs, so a graph costs a
job per level of depth (more where a wave outgrows a job's bounds), not a job per task.
Each job goes through the same scheduler, retries and UI as any query: a task lost
with its worker is run again, so a function may run more than once. A job that fails
even so (a function that ends its Python process fails it, after drove's retries)
fails the futures of its wave with the job's error.

Results come back to the client at the end of each wave, which keeps them until they
are gathered and passes them to the tasks that take them.
"""

import itertools

# The rest is imported where used: `import drove` stays quick.

#: Pickled calls one job carries at most, in bytes: they travel inside its plan.
JOB_PAYLOAD_MAX = 8 << 20
#: Tasks one job carries at most.
JOB_TASKS_MAX = 100_000
#: Partitions of one job's table at most: each is a drove task, on one worker slot.
PARTITIONS_MAX = 256
#: Jobs ``Client.jobs`` remembers, the latest.
JOBS_KEPT = 1000
#: The name of the UDF that runs the calls, in each session that has a client.
UDF_NAME = "drove_tasks"


class TaskError(Exception):
    """A task's function raised; the message carries its traceback from the worker."""


def _run_calls(calls):
    """The UDF the workers run: each pickled call, answered with its pickled outcome,
    ``(True, value)`` or ``(False, (exception, traceback))``."""
    import traceback

    import cloudpickle
    import pyarrow as pa

    out = []
    for call in calls.to_pylist():
        try:
            fn, args, kwargs = cloudpickle.loads(call)
            outcome = (True, fn(*args, **kwargs))
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # the task's failure (SystemExit too), not the job's
            outcome = (False, (e, traceback.format_exc()))
        try:
            pickled = cloudpickle.dumps(outcome)
            if not outcome[0]:
                cloudpickle.loads(pickled)  # an exception that cannot be rebuilt there
        except Exception as e:
            why = f"{type(e).__name__}: {e}"
            if outcome[0]:
                failure = TaskError(f"the task's result could not be pickled ({why})")
            else:
                failure = TaskError(f"{outcome[1][1]}\n(the exception could not be pickled: {why})")
            pickled = cloudpickle.dumps((False, (failure, "")))
        out.append(pickled)
    return pa.array(out, pa.binary())


class Future:
    """The result of one submitted call, computed on the cluster when asked for."""

    __slots__ = ("_client", "key", "_fn", "_args", "_kwargs", "_deps", "_state", "_value")

    def __init__(self, client, key, fn, args, kwargs, deps):
        self._client = client
        self.key = key
        self._fn, self._args, self._kwargs, self._deps = fn, args, kwargs, deps
        self._state = "pending"  # or "finished", "error"
        self._value = None

    def done(self) -> bool:
        """Whether the task has run (or failed)."""
        return self._state != "pending"

    def result(self):
        """The function's return value, running the graph up to this task if needed;
        raises what the function raised (a ``TaskError`` with the worker's traceback
        where the exception itself could not travel)."""
        self._client._run([self])
        return self._outcome()

    def exception(self):
        """What the function raised, or None."""
        self._client._run([self])
        return self._value if self._state == "error" else None

    def _outcome(self):
        if self._state == "error":
            raise self._value
        return self._value

    def _finish(self, ok, value):
        self._state = "finished" if ok else "error"
        self._value = value
        # The call is no longer needed; its arguments may be large.
        self._fn = self._args = self._kwargs = self._deps = None

    def __repr__(self):
        return f"<drove.Future {self.key} {self._state}>"


def _futures_in(value, found):
    """Collects the futures in ``value`` and in the lists, tuples, sets and dicts it
    holds."""
    if isinstance(value, Future):
        found.append(value)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            _futures_in(v, found)
    elif isinstance(value, dict):
        for v in value.values():
            _futures_in(v, found)


def _resolved(value):
    """``value`` with each future replaced by its result: a container that holds
    futures is copied (a list or dict keeps its type, as ``copy.copy`` makes it), any
    other value is passed as it is."""
    if isinstance(value, Future):
        return value._value
    found = []
    _futures_in(value, found)
    if not found:
        return value
    import copy

    if isinstance(value, list):
        out = copy.copy(value)
        out[:] = [_resolved(v) for v in value]
        return out
    if isinstance(value, dict):
        out = copy.copy(value)
        for k, v in value.items():
            out[k] = _resolved(v)
        return out
    items = [_resolved(v) for v in value]
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*items)
    return type(value)(items)


class Client:
    """Submits Python functions as tasks to the session's cluster (``session.client()``).
    Threads may share it: one runs waves at a time."""

    def __init__(self, session, partitions=None):
        import collections
        import threading

        if partitions is not None and not (isinstance(partitions, int) and partitions > 0):
            raise ValueError(f"client(partitions={partitions!r}): give a number of partitions, 1 or more, or None")
        self._session = session
        self._keys = itertools.count()
        self._partitions = partitions
        self._running = threading.RLock()
        session.register_udf(_udf())
        #: The latest jobs the client ran (up to ``JOBS_KEPT``): each one's id, the
        #: graph's tasks it ran, drove's tasks, the attempts beyond one that drove made
        #: (re-runs) and the workers it ran on.
        self.jobs = collections.deque(maxlen=JOBS_KEPT)

    def submit(self, fn, *args, **kwargs) -> Future:
        """Records ``fn(*args, **kwargs)`` as a task and returns its future; futures
        among the arguments (also inside lists, tuples, sets and dicts) are replaced
        by their results, so the task runs after theirs."""
        if not callable(fn):
            raise TypeError(f"submit: {fn!r} is not callable; pass a function first, then its arguments")
        deps = []
        _futures_in(args, deps)
        _futures_in(kwargs, deps)
        for d in deps:
            if d._client is not self:
                raise ValueError(f"submit: {d!r} belongs to another client; gather it first and pass its result")
        return Future(self, next(self._keys), fn, args, kwargs, deps)

    def map(self, fn, *iterables) -> "list[Future]":
        """``submit(fn, *items)`` for each tuple of items, as ``map`` zips them."""
        return [self.submit(fn, *items) for items in zip(*iterables)]

    def gather(self, futures):
        """The results of ``futures`` (a future, or a list, tuple, set or dict that
        holds futures), in the same shape; raises the first task's exception."""
        found = []
        _futures_in(futures, found)
        self._run(found)
        for f in found:
            if f._state == "error":
                f._outcome()
        return _resolved(futures)

    def as_completed(self, futures):
        """Yields ``futures`` as they finish (a wave at a time)."""
        waiting = list(dict.fromkeys(futures))
        while waiting:
            self._run(waiting, one_wave=True)
            still = []
            for f in waiting:
                if f.done():
                    yield f
                else:
                    still.append(f)
            waiting = still

    def _run(self, futures, one_wave=False):
        """Runs the tasks ``futures`` need, in waves of tasks whose arguments are ready."""
        with self._running:
            needed = self._needed(futures)
            while needed:
                ready = [f for f in needed if all(d.done() for d in f._deps)]
                for job in self._jobs(ready):
                    self._run_job(job)
                needed = [f for f in needed if not f.done()]
                if one_wave and any(f.done() for f in futures):
                    return

    def _needed(self, futures):
        """The unfinished tasks among ``futures`` and their dependencies, each once."""
        seen, needed, stack = set(), [], [f for f in futures if not f.done()]
        while stack:
            f = stack.pop()
            if id(f) in seen or f.done():
                continue
            seen.add(id(f))
            needed.append(f)
            stack.extend(f._deps)
        return needed

    def _jobs(self, ready):
        """``ready`` as the pickled calls of one or more jobs within their bounds; a
        task whose argument failed fails in turn without running."""
        from ._pickle import own_code_by_value

        with own_code_by_value() as cloudpickle:
            calls = [self._call(f, cloudpickle) for f in ready]
        job, size = [], 0
        for f, call in zip(ready, calls):
            if call is None:
                continue
            if job and (size + len(call) > JOB_PAYLOAD_MAX or len(job) >= JOB_TASKS_MAX):
                yield job
                job, size = [], 0
            job.append((f, call))
            size += len(call)
        if job:
            yield job

    @staticmethod
    def _call(f, cloudpickle):
        """The pickled call of ``f``, or None if it failed without running: because an
        argument failed, or because the call is too large or cannot be pickled."""
        failed = next((d for d in f._deps if d._state == "error"), None)
        if failed is not None:
            f._finish(False, failed._value)
            return None
        try:
            # Arguments without futures (submit found none) go as they are.
            args, kwargs = f._args, f._kwargs
            if f._deps:
                args, kwargs = _resolved(args), _resolved(kwargs)
            call = cloudpickle.dumps((f._fn, args, kwargs))
        except Exception as e:
            f._finish(False, TaskError(f"task {f.key}: its function or arguments cannot be pickled: {e}"))
            return None
        if len(call) > JOB_PAYLOAD_MAX:
            f._finish(
                False,
                TaskError(
                    f"task {f.key}: its function and arguments pickle to {len(call)} bytes, over "
                    f"the {JOB_PAYLOAD_MAX} a task can carry; keep large data in files or tables "
                    "and pass their paths"
                ),
            )
            return None
        return call

    def _run_job(self, job):
        """Runs one job's calls on the cluster and finishes their futures."""
        import cloudpickle

        parts = self._partitions or 4 * max(1, self._session._slots())
        parts = min(len(job), parts, PARTITIONS_MAX)
        per = -(-len(job) // parts)
        selects = []
        for start in range(0, len(job), per):
            rows = ", ".join(f"({i}, X'{call.hex()}')" for i, (_, call) in enumerate(job[start : start + per], start))
            selects.append(f"SELECT column1 AS id, {UDF_NAME}(column2) AS outcome FROM (VALUES {rows})")
        try:
            table, summary = self._session.sql(" UNION ALL ".join(selects))._collect_with_summary()
        except Exception as e:
            # Failed after drove's retries: running the wave again would fail alike,
            # repeating its functions' effects.
            for f, _ in job:
                f._finish(False, e)
            raise
        outcomes = dict(zip(table.column("id").to_pylist(), table.column("outcome").to_pylist()))
        for i, (f, _) in enumerate(job):
            try:
                ok, value = cloudpickle.loads(outcomes[i])
            except Exception as e:
                ok, value = False, (TaskError(f"task {f.key}: its outcome cannot be unpickled here: {e}"), "")
            if not ok:
                exception, trace = value
                if trace:
                    exception.__cause__ = TaskError(f"task {f.key} raised on a worker:\n{trace}")
                value = exception
            f._finish(ok, value)
        self.jobs.append({**summary, "graph_tasks": len(job)})

    def __repr__(self):
        return f"<drove.Client of {self._session!r}, {len(self.jobs)} jobs run>"


def _udf():
    import pyarrow as pa

    from . import udf

    return udf(_run_calls, [pa.binary()], pa.binary(), name=UDF_NAME)
