"""The chunk service: chunking, dedup, quorum replication and verified reads (grpc.aio)."""
