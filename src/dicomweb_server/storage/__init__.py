"""Blob storage: an interface, filesystem and S3 implementations and an in-memory twin."""

from dicomweb_server.storage.base import (
    BlobStore,
    BlobStoreConfigurationError,
    StagedBlob,
    StagingWriter,
    WouldWait,
    new_blob_key,
)
from dicomweb_server.storage.factory import open_blob_store
from dicomweb_server.storage.filesystem import FilesystemBlobStore
from dicomweb_server.storage.memory import MemoryBlobStore

__all__ = [
    "BlobStore",
    "BlobStoreConfigurationError",
    "FilesystemBlobStore",
    "MemoryBlobStore",
    "StagedBlob",
    "StagingWriter",
    "WouldWait",
    "new_blob_key",
    "open_blob_store",
]
