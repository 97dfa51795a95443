"""A chunk service that takes uploads slowly and never answers: a test kills it mid-call.

Run as ``python -m tests.support.slow_chunk_server``; it prints its port, then one line
per upload frame it has read.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from dfms.proto import chunk_pb2 as pb
from dfms.proto import chunk_pb2_grpc as pb_grpc

FRAME_PAUSE_S = 0.2  # slow enough that the client's sends back up behind flow control


class SlowChunkService(pb_grpc.ChunkServiceServicer):
    async def Upload(self, request_iterator: Any, context: Any) -> pb.UploadResult:
        async for _ in request_iterator:
            print("frame", flush=True)
            await asyncio.sleep(FRAME_PAUSE_S)
        await asyncio.Event().wait()  # never answers: the test kills the process
        raise AssertionError("unreachable")


async def main() -> None:
    server = grpc.aio.server()
    pb_grpc.add_ChunkServiceServicer_to_server(SlowChunkService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
