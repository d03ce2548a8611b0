"""Build the configured blob store from settings.

The S3 module (and boto3) is imported only when the S3 backend is configured, so the
embedded archive does not pay for it at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dicomweb_server.settings import Settings
from dicomweb_server.storage.base import BlobStore, BlobStoreConfigurationError
from dicomweb_server.storage.filesystem import FilesystemBlobStore

if TYPE_CHECKING:
    from dicomweb_server.storage.s3 import S3Options


def s3_options(settings: Settings) -> S3Options:
    """The S3 options of the settings; refuses half-given credentials and a missing bucket."""
    from dicomweb_server.storage.s3 import S3Options

    if not settings.s3_bucket:
        raise BlobStoreConfigurationError(
            "DICOMWEB_STORAGE_BACKEND=s3 needs DICOMWEB_S3_BUCKET, the bucket to store in"
        )
    secret = settings.s3_secret_access_key
    if (settings.s3_access_key_id is None) != (secret is None):
        raise BlobStoreConfigurationError(
            "set both DICOMWEB_S3_ACCESS_KEY_ID and DICOMWEB_S3_SECRET_ACCESS_KEY, or neither "
            "(to use boto3's credential chain)"
        )
    return S3Options(
        bucket=settings.s3_bucket,
        prefix=settings.s3_prefix,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=secret.get_secret_value() if secret is not None else None,
        addressing_style=settings.s3_addressing_style,
        multipart_threshold=settings.s3_multipart_threshold_bytes,
        multipart_chunk=settings.s3_multipart_chunk_bytes,
        max_connections=settings.s3_max_connections,
        connect_timeout=settings.s3_connect_timeout_seconds,
        read_timeout=settings.s3_read_timeout_seconds,
        max_attempts=settings.s3_max_attempts,
    )


def open_blob_store(settings: Settings) -> BlobStore:
    """The blob store ``settings.storage_backend`` names, checked and ready for use.

    An S3 bucket must exist (unless ``s3_create_bucket``): failing here, at start-up, with
    the bucket and endpoint named, beats failing every store request later.
    """
    if settings.storage_backend == "filesystem":
        return FilesystemBlobStore(settings.resolved_storage_path)
    from dicomweb_server.storage.s3 import S3BlobStore

    store = S3BlobStore(s3_options(settings), settings.resolved_staging_path)
    store.require_bucket(create=settings.s3_create_bucket)
    return store
