"""One typed settings object, read from ``DICOMWEB_*`` environment variables.

Everything that a deployment may want to change lives here so that the rest of the code
receives its configuration explicitly instead of reading the environment itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration of the archive.

    The defaults describe the embedded archive: SQLite in WAL mode and a blob folder under
    ``data_dir``. Production points ``database_url`` at PostgreSQL.
    """

    model_config = SettingsConfigDict(env_prefix="DICOMWEB_", extra="ignore")

    data_dir: Path = Field(
        default=Path("data"), description="Folder for the embedded index and blobs."
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; defaults to SQLite at <data_dir>/index.sqlite."
    )
    storage_path: Path | None = Field(
        default=None, description="Blob folder; defaults to <data_dir>/blobs."
    )
    public_base_url: str | None = Field(
        default=None,
        description="Absolute URL of the DICOMweb root as clients see it (behind a proxy). "
        "When unset, URLs are built from Forwarded / X-Forwarded-* / Host headers.",
    )
    url_prefix: str = Field(default="/dicom-web", description="Path of the DICOMweb root.")
    trust_forwarded_headers: bool = Field(
        default=True,
        description="Build URLs from Forwarded / X-Forwarded-* headers (disable when clients "
        "reach the archive directly rather than through a proxy that sets them).",
    )

    allow_overwrite: bool = Field(
        default=False,
        description="Replace a stored instance when different bytes arrive under its SOP "
        "Instance UID, instead of refusing them.",
    )
    bulk_data_threshold: int = Field(
        default=1024,
        ge=0,
        description="Binary values longer than this many bytes are returned as BulkDataURI.",
    )
    qido_default_limit: int = Field(
        default=1000, ge=1, description="Results when no limit is given."
    )
    qido_max_limit: int = Field(default=10000, ge=1, description="Most results one query returns.")
    max_request_bytes: int = Field(
        default=64 * 1024**3, ge=1, description="Largest accepted STOW request body."
    )
    max_part_header_bytes: int = Field(
        default=16 * 1024, ge=256, description="Largest accepted multipart part header block."
    )
    retrieve_chunk_bytes: int = Field(
        default=1024 * 1024, ge=4096, description="Read size when streaming stored files."
    )
    fast_lane: bool = Field(
        default=True,
        description="Answer single instances, single frames as stored and metadata without "
        "the framework's routing (same bytes, headers, audit and metrics); off sends every "
        "request through the full routes.",
    )
    sqlite_busy_timeout_ms: int = Field(default=30000, ge=0)
    worker_lease_seconds: float = Field(
        default=60.0,
        ge=5.0,
        description="How long a worker process may go without renewing its lease in the "
        "index before other workers treat it as gone and clean up its unfinished stores. "
        "Hosts sharing an index need clocks that agree well within this.",
    )
    worker_timeout_seconds: float = Field(
        default=60.0,
        ge=0.0,
        description="With serve --workers N (N > 1): a worker whose event loop has not "
        "answered its supervisor for this long (stuck, or the process stopped) is killed and "
        "replaced; 0 never does. Silent for a few seconds, it already gets no new connection.",
    )

    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed to call the archive (CORS), comma-separated, "
        "e.g. https://viewer.example.org; '*' allows any origin. Empty: no CORS headers.",
    )
    imaging_workers: int = Field(
        default=2,
        ge=1,
        description="Threads that decode, encode and render pixel data; CPU-heavy work "
        "waits for one of them instead of stalling other requests.",
    )
    max_render_pixels: int = Field(
        default=2**28,
        ge=1,
        description="Most pixel samples (Rows x Columns x Samples per Pixel x frames) one "
        "decode may produce for rendering or transcoding: a decompression-bomb guard. "
        "Beyond it the request is answered 400; the data can still be retrieved as stored.",
    )
    max_frames_per_request: int = Field(
        default=10_000, ge=1, description="Most frame numbers one frames request may list."
    )

    # --- Index database pool ---
    # PostgreSQL only: each server process holds one pool, so a deployment needs up to
    # workers x (pool size + max overflow) connections within the server's max_connections.
    database_pool_size: int = Field(
        default=10, ge=1, description="PostgreSQL connections each server process keeps open."
    )
    database_max_overflow: int = Field(
        default=20,
        ge=0,
        description="Further PostgreSQL connections a process may open under load; they are "
        "closed when returned.",
    )
    database_pool_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a request waits for a free PostgreSQL connection before failing.",
    )
    database_statement_timeout_ms: int = Field(
        default=0,
        ge=0,
        description="PostgreSQL statement_timeout of the server's queries (0: none); a query "
        "running longer is cancelled. Schema migrations are not limited.",
    )
    database_application_name: str = Field(
        default="dicomweb-server",
        max_length=63,
        description="application_name of the server's PostgreSQL sessions, shown in "
        "pg_stat_activity and the server log; a URL parameter of the same name wins.",
    )

    # --- Authentication and authorization (docs/security.md) ---
    auth: Literal["on", "off"] = Field(
        default="on",
        description="Require a valid OIDC bearer token on every request but /healthz and "
        "/readyz. 'off' is accepted only when the server listens on a loopback address.",
    )
    oidc_issuer: str | None = Field(
        default=None,
        description="Issuer URL; its discovery document gives the JWKS, and tokens' 'iss' "
        "must equal it.",
    )
    oidc_jwks_url: str | None = Field(
        default=None, description="JWKS URL, instead of discovery from the issuer."
    )
    oidc_jwks_file: Path | None = Field(
        default=None, description="A JWKS file, instead of fetching keys over HTTP."
    )
    oidc_audience: str | None = Field(
        default=None, description="Required 'aud' value of access tokens (RFC 9068)."
    )
    oidc_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "RS256",
            "RS384",
            "RS512",
            "PS256",
            "PS384",
            "PS512",
            "ES256",
            "ES384",
            "ES512",
            "EdDSA",
        ],
        description="Accepted signature algorithms, comma-separated; 'none' and HMAC "
        "algorithms are never accepted.",
    )
    oidc_leeway_seconds: int = Field(
        default=30, ge=0, le=60, description="Clock skew allowed on exp, nbf and iat."
    )
    oidc_jwks_refetch_seconds: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="Least time between two fetches of the issuer's keys: how soon a rotated "
        "key is picked up, and how often made-up key ids or an issuer outage can cause a fetch.",
    )
    oidc_introspection_url: str | None = Field(
        default=None,
        description="RFC 7662 introspection endpoint for opaque (non-JWT) access tokens.",
    )
    oidc_client_id: str | None = Field(
        default=None, description="Client id the archive authenticates with at introspection."
    )
    oidc_client_secret: SecretStr | None = Field(
        default=None, description="Client secret for introspection."
    )
    roles_claim: str = Field(
        default="scope",
        description="Claim the roles come from: 'scope' (space-separated dicomweb.read, "
        "dicomweb.write, dicomweb.delete, dicomweb.admin) or a dotted path to a list, e.g. "
        "realm_access.roles.",
    )
    role_names: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: {
            "dicomweb.read": "reader",
            "dicomweb.write": "writer",
            "dicomweb.delete": "deleter",
            "dicomweb.monitor": "monitor",
            "dicomweb.admin": "admin",
        },
        description="Claim values that grant each role, as value=role pairs, comma-separated.",
    )
    patient_claim: str | None = Field(
        default=None,
        description="Claim whose value restricts a token to one patient's studies (Patient "
        "ID); tokens without it see all patients.",
    )

    # --- TLS served by the archive itself (docs/deployment-tls.md); serve's options win ---
    tls_certfile: Path | None = Field(
        default=None,
        description="PEM certificate chain (server certificate first): serve HTTPS, with "
        "HTTP/2 and HTTP/1.1, instead of plain HTTP. Needs tls_keyfile.",
    )
    tls_keyfile: Path | None = Field(
        default=None, description="PEM private key of the certificate in tls_certfile."
    )
    tls_ca_certs: Path | None = Field(
        default=None,
        description="PEM CA certificates: with TLS on, clients must present a certificate "
        "issued by one of them (mutual TLS).",
    )

    # --- Audit trail (docs/audit.md) ---
    audit_dir: Path | None = Field(
        default=None,
        description="Folder of the append-only audit trail; defaults to <data_dir>/audit.",
    )
    audit_source_id: str | None = Field(
        default=None,
        description="AuditSourceID of every audit message; defaults to the host name.",
    )
    audit_syslog_url: str | None = Field(
        default=None,
        description="Forward audit messages to this syslog collector, tls://host:port "
        "(RFC 5424 messages over TLS, RFC 5425). Unset: audit records stay local.",
    )
    audit_syslog_ca_file: Path | None = Field(
        default=None,
        description="PEM CA certificates the collector's certificate is verified against; "
        "defaults to the system's trusted CAs.",
    )
    audit_syslog_cert_file: Path | None = Field(
        default=None,
        description="PEM client certificate (chain) presented to the collector (ATNA node "
        "authentication); may also hold the key.",
    )
    audit_syslog_key_file: Path | None = Field(
        default=None, description="PEM private key of audit_syslog_cert_file."
    )

    # --- Metrics (docs/deployment.md, Monitoring) ---
    metrics: bool = Field(
        default=True,
        description="Count and time requests and serve Prometheus metrics at /metrics "
        "('off' removes both).",
    )
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics without an access token, for a scraper on a private "
        "network; otherwise it needs the admin role (when authentication is on).",
    )

    # --- Hostile-input limits (docs/conformance.md section 8) ---
    max_parts_per_request: int = Field(
        default=10_000,
        ge=1,
        description="Most parts one STOW request may have; the request is answered 413 "
        "beyond (parts before the limit may already be stored).",
    )
    max_query_string_bytes: int = Field(
        default=8192,
        ge=256,
        description="Longest accepted query string (after '?') of any request; 414 beyond.",
    )
    max_sequence_depth: int = Field(
        default=32,
        ge=1,
        le=128,
        description="Deepest sequence nesting a stored instance may have; deeper instances "
        "are refused (failure 0xC000) before they are parsed.",
    )
    max_inflated_bytes: int = Field(
        default=256 * 1024**2,
        ge=1,
        description="Largest size a Deflated Explicit VR Little Endian data set may inflate "
        "to; beyond it the instance is refused (failure 0xC000) without inflating further.",
    )

    # --- Object storage (docs/configuration.md, "Object storage") ---
    storage_backend: Literal["filesystem", "s3"] = Field(
        default="filesystem",
        description="Where stored instances live: 'filesystem' (storage_path) or 's3' (a "
        "bucket of AWS S3 or an S3-compatible service).",
    )
    s3_bucket: str | None = Field(
        default=None,
        description="Bucket of the s3 backend. It must exist unless s3_create_bucket is set.",
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="URL of an S3-compatible service (SeaweedFS, MinIO, Ceph); unset: AWS S3.",
    )
    s3_region: str | None = Field(
        default=None, description="Region of the bucket; unset: boto3's configuration chain."
    )
    s3_access_key_id: str | None = Field(
        default=None,
        description="Access key id; unset (with the secret): boto3's credential chain.",
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, description="Secret access key belonging to s3_access_key_id."
    )
    s3_prefix: str = Field(
        default="",
        description="Key prefix of every object, so several archives can share one bucket.",
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto",
        description="How the bucket is addressed; 'auto' is path style with s3_endpoint_url "
        "and boto3's choice for AWS.",
    )
    s3_multipart_threshold_bytes: int = Field(
        default=64 * 1024**2,
        ge=5 * 1024**2,
        description="Instances this large or larger are uploaded in parts.",
    )
    s3_multipart_chunk_bytes: int = Field(
        default=16 * 1024**2,
        ge=5 * 1024**2,
        le=5 * 1024**3,
        description="Size of one part of a multipart upload (grown for objects that would "
        "need more than 10,000 parts).",
    )
    s3_max_connections: int = Field(
        default=64,
        ge=1,
        description="Connection pool of the S3 client, shared by all uploads and reads.",
    )
    s3_connect_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Timeout of opening a connection to the service."
    )
    s3_read_timeout_seconds: float = Field(
        default=60.0, gt=0, description="Timeout of waiting for data on an open connection."
    )
    s3_max_attempts: int = Field(
        default=4,
        ge=1,
        description="Attempts per S3 request, including the first (boto3's standard retries).",
    )
    s3_create_bucket: bool = Field(
        default=False,
        description="Create the bucket at start-up when it does not exist (embedded and test "
        "set-ups; production buckets are made with their policies beforehand).",
    )
    staging_path: Path | None = Field(
        default=None,
        description="Local folder where incoming instances are staged before an s3 upload; "
        "defaults to <data_dir>/staging.",
    )

    @field_validator("oidc_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("oidc_algorithms")
    @classmethod
    def _no_weak_algorithms(cls, value: list[str]) -> list[str]:
        for name in value:
            if name.lower() == "none" or name.upper().startswith("HS"):
                raise ValueError(
                    f"algorithm {name!r} is not allowed: 'none' is unsigned and HMAC keys "
                    "are shared secrets, which an OIDC issuer does not sign access tokens with"
                )
        return value

    @field_validator("role_names", mode="before")
    @classmethod
    def _parse_role_names(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError("role names must be value=role pairs, comma-separated")
            return {name.strip(): role.strip() for name, role in pairs}
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("url_prefix")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        value = "/" + value.strip("/")
        return "" if value == "/" else value

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite inside the data folder."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @property
    def resolved_storage_path(self) -> Path:
        """The blob folder, defaulting to ``<data_dir>/blobs``."""
        return (self.storage_path or self.data_dir / "blobs").resolve()

    @property
    def resolved_staging_path(self) -> Path:
        """The s3 backend's local staging folder, defaulting to ``<data_dir>/staging``.

        The filesystem backend stages inside its blob folder instead, so that a commit is a
        rename within one filesystem.
        """
        return (self.staging_path or self.data_dir / "staging").resolve()
