"""Blob storage: an interface, a filesystem implementation and an in-memory twin."""

from dicomweb_server.storage.base import BlobStore, StagedBlob, StagingWriter, new_blob_key
from dicomweb_server.storage.filesystem import FilesystemBlobStore
from dicomweb_server.storage.memory import MemoryBlobStore

__all__ = [
    "BlobStore",
    "FilesystemBlobStore",
    "MemoryBlobStore",
    "StagedBlob",
    "StagingWriter",
    "new_blob_key",
]
