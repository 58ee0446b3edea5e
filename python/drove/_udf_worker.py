"""A Python process beside a drove worker that runs one Python UDF (see drove-exec's
python_udf.rs for the exchange): told the function and its schema, it answers each
batch of arguments with the result column, or with the traceback of what it raised."""

import os
import struct
import sys

# The exchange has stdin and stdout to itself, from before anything else runs: what
# the function (or an import) prints goes to stderr, and what it reads finds nothing.
_requests = os.fdopen(os.dup(0), "rb")
_answers = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)

import traceback  # noqa: E402

RESULT, RAISED = 0, 1
#: The largest answer drove reads, as the worker that started this process says.
ANSWER_MAX_BYTES = int(os.environ.get("DROVE_UDF_ANSWER_MAX_BYTES", str(1 << 30)))


def read() -> "bytes | None":
    head = _requests.read(8)
    if len(head) < 8:
        return None
    (length,) = struct.unpack("<Q", head)
    body = _requests.read(length)
    return body if len(body) == length else None


def answer(status: int, body: bytes) -> None:
    _answers.write(struct.pack("<BQ", status, len(body)))
    _answers.write(body)
    _answers.flush()


def start():
    """The function and its result type, from the greeting, under the memory limit."""
    import resource

    import cloudpickle
    import pyarrow as pa

    # The memory drove allows this process for its data (DROVE_PYTHON_MEMORY on the
    # worker): past it, the function raises MemoryError instead of taking the machine.
    limit = int(os.environ.get("DROVE_UDF_MEMORY_BYTES", "0"))
    if limit > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        soft = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    function = cloudpickle.loads(read())
    returns = pa.ipc.open_stream(read()).schema.field("result").type
    return function, returns


def main() -> None:
    import pyarrow as pa

    try:
        function, returns = start()
    except Exception:
        # Said in answer to every request, so that the task's error carries it.
        failure = ("this Python process could not load the function:\n" + traceback.format_exc()).encode()
        while read() is not None:
            answer(RAISED, failure)
        return
    while True:
        request = read()
        if request is None:
            return
        try:
            arguments = pa.ipc.open_stream(request).read_next_batch()
            result = function(*arguments.columns)
            if isinstance(result, pa.ChunkedArray):
                result = result.combine_chunks()
            if not isinstance(result, pa.Array):
                result = pa.array(result, type=returns)
            elif result.type != returns:
                result = result.cast(returns)
            sink = pa.BufferOutputStream()
            table = pa.table({"result": result})
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            buf = sink.getvalue()
            # Refused before it is copied out.
            if buf.size > ANSWER_MAX_BYTES:
                raise ValueError(
                    f"the result of one batch is {buf.size} bytes, over the {ANSWER_MAX_BYTES} "
                    "drove reads; return less for each batch, and keep large data in files"
                )
            answer(RESULT, buf.to_pybytes())
        except Exception:
            answer(RAISED, traceback.format_exc().encode())


if __name__ == "__main__":
    main()
