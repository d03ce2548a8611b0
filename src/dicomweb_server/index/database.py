"""Engine and session set-up for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from dicomweb_server.index.writer_lock import connection_class
from dicomweb_server.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"

#: URL schemes that mean PostgreSQL through psycopg 3 (``postgres://`` is what many hosting
#: services and libpq tools hand out; SQLAlchemy itself does not accept it).
_POSTGRESQL_SCHEMES = frozenset({"postgres", "postgresql", "postgresql+psycopg"})


#: Page cache of each SQLite connection, in KiB (see :func:`_configure_sqlite`).
_SQLITE_CACHE_KIB = 8 * 1024


def _configure_sqlite(dbapi_connection: Any, _record: Any, busy_timeout_ms: int) -> None:
    # WAL lets searches read while a store commits; synchronous=FULL makes a commit durable
    # before it returns, which the acknowledgement of a stored instance depends on.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    # For readers: a search that probes many rows (the COUNT of a broad QIDO search) spends
    # most of its time copying pages from the OS into SQLite's small per-connection cache
    # (2 MiB by default), three times what the query itself costs. A larger cache keeps the
    # hot index and study pages; it only holds pages already read and changes nothing in
    # how or when a commit reaches the disk. (Memory-mapped reads are as fast, but every
    # pooled connection maps the file anew, which multiplies the resident size reported.)
    cursor.execute(f"PRAGMA cache_size=-{_SQLITE_CACHE_KIB}")
    cursor.close()


def is_postgresql_url(url: str) -> bool:
    """Whether `url` selects PostgreSQL (any of the accepted spellings)."""
    return make_url(url).drivername in _POSTGRESQL_SCHEMES


def postgresql_url(
    url: str, *, statement_timeout_ms: int = 0, application_name: str | None = None
) -> URL:
    """`url` for psycopg 3, with the session settings the archive asks for.

    Session settings travel as libpq connection parameters (``options``,
    ``application_name``), so they hold from a connection's first statement and cost no
    round trip; values already in the URL are kept (an ``options`` value is extended).
    """
    parsed = make_url(url).set(drivername="postgresql+psycopg")
    query: dict[str, str] = {}
    if statement_timeout_ms:
        given = parsed.query.get("options")
        options = " ".join(given) if isinstance(given, tuple) else (given or "")
        query["options"] = f"{options} -c statement_timeout={int(statement_timeout_ms)}".strip()
    if application_name and "application_name" not in parsed.query:
        query["application_name"] = application_name
    return parsed.update_query_dict(query) if query else parsed


def create_index_engine(
    url: str,
    *,
    busy_timeout_ms: int = 30000,
    pool_size: int = 10,
    max_overflow: int = 20,
    pool_timeout_s: float = 30.0,
    statement_timeout_ms: int = 0,
    application_name: str | None = "dicomweb-server",
    writer_lock: bool = False,
) -> Engine:
    """An engine with the per-dialect settings the archive relies on.

    PostgreSQL connections come from a QueuePool of `pool_size` connections kept open plus
    up to `max_overflow` opened under load; a checkout waits `pool_timeout_s` seconds for
    one, and one that sat idle is pinged first so that a connection the server or a
    firewall dropped is replaced instead of failing a request (:func:`_ping_after_idle`).
    The pool options do not apply to SQLite, whose connections are local file handles.
    `writer_lock` (SQLite files only) makes write transactions queue on a file lock before
    they take SQLite's (:mod:`.writer_lock`).
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        connect_args: dict[str, Any] = {
            "check_same_thread": False,
            "timeout": busy_timeout_ms / 1000,
        }
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            if writer_lock:
                connect_args["factory"] = connection_class(
                    f"{path}-writer.lock", busy_timeout_ms / 1000
                )
        engine = create_engine(
            url,
            connect_args=connect_args,
            pool_size=8,
            max_overflow=16,
        )
        event.listen(
            engine,
            "connect",
            lambda conn, record: _configure_sqlite(conn, record, busy_timeout_ms),
        )
        return engine
    target: str | URL = url
    if is_postgresql_url(url):
        target = postgresql_url(
            url, statement_timeout_ms=statement_timeout_ms, application_name=application_name
        )
    engine = create_engine(
        target,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout_s,
    )
    _ping_after_idle(engine, PING_AFTER_IDLE_SECONDS)
    return engine


#: A pooled connection unused for longer than this is pinged before it is handed out.
PING_AFTER_IDLE_SECONDS = 2.0


def _ping_after_idle(engine: Engine, idle_seconds: float) -> None:
    """Ping a pooled connection before use only when it sat idle, and replace it if dead.

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout: a round trip to the server
    before each request's first statement. What it guards against, a connection a firewall
    or the server dropped while nobody used it, needs a connection that sat in the pool;
    one given back moments ago was working then. A connection that fails its ping is
    discarded and the pool connects anew (up to three times), as with ``pool_pre_ping``.
    When the server restarts under load, the requests holding a connection fail with 503
    either way; the first such failure makes the pool drop all its connections.
    """

    @event.listens_for(engine, "checkin")
    def _given_back(_dbapi_connection: Any, record: Any) -> None:
        record.info["given_back"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _taken(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        given_back = record.info.get("given_back")
        if given_back is None or time.monotonic() - given_back < idle_seconds:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(f"a pooled connection was lost: {exc}") from exc


def index_engine(settings: Settings, *, writer_lock: bool = False) -> Engine:
    """The archive's index engine, with the pool and session options of `settings`."""
    return create_index_engine(
        settings.resolved_database_url,
        busy_timeout_ms=settings.sqlite_busy_timeout_ms,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        pool_timeout_s=settings.database_pool_timeout,
        statement_timeout_ms=settings.database_statement_timeout_ms,
        application_name=settings.database_application_name,
        writer_lock=writer_lock,
    )


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    """Alembic configuration pointing at the project's migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_schema(url: str) -> None:
    """Bring the schema to the newest revision; the only way the schema is created or changed."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")
