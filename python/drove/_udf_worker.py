"""A Python process beside a drove worker that runs one Python UDF (see drove-exec's
python_udf.rs for the exchange): told the function and its schema, it answers each
batch of arguments with the result column, or with the traceback of what it raised."""

import os
import resource
import struct
import sys
import traceback

import cloudpickle
import pyarrow as pa


def main() -> None:
    # The memory drove allows this process for its data (DROVE_PYTHON_MEMORY on the
    # worker): past it, the function raises MemoryError instead of taking the machine.
    limit = int(os.environ.get("DROVE_UDF_MEMORY_BYTES", "0"))
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    # The exchange has stdout to itself: what the function prints goes to stderr.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer

    def read() -> "bytes | None":
        head = requests.read(8)
        if len(head) < 8:
            return None
        (length,) = struct.unpack("<Q", head)
        return requests.read(length)

    def answer(status: int, body: bytes) -> None:
        answers.write(struct.pack("<BQ", status, len(body)))
        answers.write(body)
        answers.flush()

    function = cloudpickle.loads(read())
    returns = pa.ipc.open_stream(read()).schema.field("result").type
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
            answer(0, sink.getvalue().to_pybytes())
        except Exception:
            answer(1, traceback.format_exc().encode())


if __name__ == "__main__":
    main()
