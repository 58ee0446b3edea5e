"""What the Python tests share: the wheel's drove command, free ports, an embedded
session and clusters of drove processes."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import drove


def drove_command():
    """The `drove` command this environment's wheel installed."""
    found = shutil.which("drove", path=os.path.dirname(sys.executable))
    assert found, f"no drove command beside {sys.executable}"
    return found


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def session():
    with drove.local(2) as s:
        yield s


@contextlib.contextmanager
def cluster_processes(logs, workers, coordinator_args=()):
    """A coordinator and `workers` worker processes of two slots, each run by the
    wheel's drove command with its log in `logs`: yields the coordinator's address and
    the worker processes, once all registered; stops them all at the end."""
    grpc, http = free_port(), free_port()
    started = []

    def start(name, *args):
        log = open(logs / f"{name}.log", "w")
        # The workers run Python functions with this interpreter (DROVE_PYTHON opts in).
        env = {**os.environ, "DROVE_PYTHON": sys.executable}
        process = subprocess.Popen([drove_command(), *args], stdout=log, stderr=log, env=env)
        started.append((process, log))
        return process

    try:
        start(
            "coordinator",
            "coordinator",
            "--bind",
            f"127.0.0.1:{grpc}",
            "--http",
            f"127.0.0.1:{http}",
            *coordinator_args,
        )
        processes = [
            start(f"worker-{i}", "worker", "--coordinator", f"127.0.0.1:{grpc}", "--slots", "2")
            for i in range(workers)
        ]
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/v1/workers") as answer:
                    if len(json.load(answer)) == workers:
                        break
            except OSError:
                pass
            for process, _ in started:
                assert process.poll() is None, f"a drove process exited; see {logs}"
            assert time.monotonic() < deadline, f"{workers} workers did not register in 120 s; see {logs}"
            time.sleep(0.2)
        yield f"127.0.0.1:{grpc}", processes
    finally:
        for process, _ in started:
            process.terminate()
        for process, log in started:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
