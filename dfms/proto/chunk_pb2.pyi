from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UploadContext(_message.Message):
    __slots__ = ("upload_id", "owner_id", "max_size", "expected_sha256", "expected_size")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SHA256_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SIZE_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    owner_id: str
    max_size: int
    expected_sha256: bytes
    expected_size: int
    def __init__(self, upload_id: _Optional[str] = ..., owner_id: _Optional[str] = ..., max_size: _Optional[int] = ..., expected_sha256: _Optional[bytes] = ..., expected_size: _Optional[int] = ...) -> None: ...

class UploadFrame(_message.Message):
    __slots__ = ("context", "data")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    context: UploadContext
    data: bytes
    def __init__(self, context: _Optional[_Union[UploadContext, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ChunkRef(_message.Message):
    __slots__ = ("sha256", "offset", "size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: bytes
    offset: int
    size: int
    def __init__(self, sha256: _Optional[bytes] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class UploadResult(_message.Message):
    __slots__ = ("chunks", "total_size", "sha256", "new_chunks", "dedup_chunks", "new_bytes", "dedup_bytes", "under_replicated_chunks")
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    NEW_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    DEDUP_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    NEW_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEDUP_BYTES_FIELD_NUMBER: _ClassVar[int]
    UNDER_REPLICATED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkRef]
    total_size: int
    sha256: bytes
    new_chunks: int
    dedup_chunks: int
    new_bytes: int
    dedup_bytes: int
    under_replicated_chunks: int
    def __init__(self, chunks: _Optional[_Iterable[_Union[ChunkRef, _Mapping]]] = ..., total_size: _Optional[int] = ..., sha256: _Optional[bytes] = ..., new_chunks: _Optional[int] = ..., dedup_chunks: _Optional[int] = ..., new_bytes: _Optional[int] = ..., dedup_bytes: _Optional[int] = ..., under_replicated_chunks: _Optional[int] = ...) -> None: ...

class ChunkList(_message.Message):
    __slots__ = ("chunks",)
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkRef]
    def __init__(self, chunks: _Optional[_Iterable[_Union[ChunkRef, _Mapping]]] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("manifest_id", "chunks", "offset", "length")
    MANIFEST_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    manifest_id: str
    chunks: ChunkList
    offset: int
    length: int
    def __init__(self, manifest_id: _Optional[str] = ..., chunks: _Optional[_Union[ChunkList, _Mapping]] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class DownloadFrame(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class PutChunkRequest(_message.Message):
    __slots__ = ("sha256", "data")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sha256: bytes
    data: bytes
    def __init__(self, sha256: _Optional[bytes] = ..., data: _Optional[bytes] = ...) -> None: ...

class PutChunkResult(_message.Message):
    __slots__ = ("new", "replicas")
    NEW_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    new: bool
    replicas: int
    def __init__(self, new: _Optional[bool] = ..., replicas: _Optional[int] = ...) -> None: ...

class HasChunksRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, sha256: _Optional[_Iterable[bytes]] = ...) -> None: ...

class HasChunksResponse(_message.Message):
    __slots__ = ("present",)
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    present: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, present: _Optional[_Iterable[bool]] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStat(_message.Message):
    __slots__ = ("node_id", "endpoint", "zone", "health", "admin_state", "replicas")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    ADMIN_STATE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    endpoint: str
    zone: str
    health: str
    admin_state: str
    replicas: int
    def __init__(self, node_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., zone: _Optional[str] = ..., health: _Optional[str] = ..., admin_state: _Optional[str] = ..., replicas: _Optional[int] = ...) -> None: ...

class StatResponse(_message.Message):
    __slots__ = ("chunk_count", "stored_bytes", "replicas_n", "write_quorum_w", "ring_epoch", "chunker", "under_replicated_chunks", "nodes")
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_N_FIELD_NUMBER: _ClassVar[int]
    WRITE_QUORUM_W_FIELD_NUMBER: _ClassVar[int]
    RING_EPOCH_FIELD_NUMBER: _ClassVar[int]
    CHUNKER_FIELD_NUMBER: _ClassVar[int]
    UNDER_REPLICATED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    chunk_count: int
    stored_bytes: int
    replicas_n: int
    write_quorum_w: int
    ring_epoch: int
    chunker: str
    under_replicated_chunks: int
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStat]
    def __init__(self, chunk_count: _Optional[int] = ..., stored_bytes: _Optional[int] = ..., replicas_n: _Optional[int] = ..., write_quorum_w: _Optional[int] = ..., ring_epoch: _Optional[int] = ..., chunker: _Optional[str] = ..., under_replicated_chunks: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[NodeStat, _Mapping]]] = ...) -> None: ...
