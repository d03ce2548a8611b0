"""The ``dicomweb-server`` command line: serve, db upgrade, import."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicomweb_server import __version__
from dicomweb_server.settings import Settings

#: The application factory every worker imports.
APP = "dicomweb_server.app:app_from_environment"


def _settings(data_dir: str | None) -> Settings:
    if data_dir is not None:
        # Through the environment, so that worker processes see the same settings.
        os.environ["DICOMWEB_DATA_DIR"] = data_dir
    return Settings()


def _upgrade(settings: Settings) -> None:
    from dicomweb_server.index.database import upgrade_schema

    upgrade_schema(settings.resolved_database_url)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def auth_problem(settings: Settings, host: str) -> str | None:
    """Why the server must not start with these settings on this address, if it must not.

    Authentication is on by default; it may be off only where no other machine can connect.
    """
    if settings.auth == "off":
        if not is_loopback(host):
            return (
                f"authentication cannot be off on {host}: it is allowed only on a loopback "
                "address (127.0.0.1, ::1, localhost); configure DICOMWEB_OIDC_ISSUER instead"
            )
        return None
    from dicomweb_server.auth.tokens import AuthConfigurationError, TokenValidator

    try:
        TokenValidator(settings).close()
    except AuthConfigurationError as exc:
        return str(exc)
    return None


def prepare(settings: Settings) -> int:
    """Upgrade the index schema and recover from an interrupted run; 0, or an exit status."""
    from dicomweb_server.services.archive import Archive
    from dicomweb_server.services.store import recover
    from dicomweb_server.storage import BlobStoreConfigurationError

    _upgrade(settings)
    try:
        archive = Archive.open(settings)
    except BlobStoreConfigurationError as error:
        print(f"dicomweb-server: {error}", file=sys.stderr)
        return 2
    try:
        staging, orphans = recover(archive)
    finally:
        archive.close()
    if staging or orphans:
        logging.getLogger("dicomweb_server").warning(
            "recovered from an interrupted run: removed %d staging files and %d orphan blobs",
            staging,
            orphans,
        )
    return 0


def _prepare_in_child() -> None:
    """Entry point of the preparing child process (settings come from the environment)."""
    sys.exit(prepare(Settings()))


def _prepare_apart() -> int:
    """`prepare` in a child process, for a supervisor of several workers.

    The supervisor only starts and watches its workers; preparing in it would import the
    whole archive (SQLAlchemy, pydicom, numpy, ...) into a process that never serves, about
    80 MB of resident memory for nothing.
    """
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(
        target=_prepare_in_child, name="dicomweb-prepare"
    )
    child.start()
    child.join()
    return child.exitcode or 0


def imaging_threads_per_worker(workers: int, cores: int | None) -> int:
    """Imaging threads for each of `workers` processes sharing `cores`: the cores each has.

    Decoding and rendering hold the interpreter lock for most of their time, so threads
    beyond a process's share of the cores only take turns with its other work: with two
    workers on two cores, one thread each rendered at about 20% less CPU per image than two.
    """
    return max(1, (cores or 1) // max(1, workers))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if args.no_auth:
        # Through the environment, so that worker processes see it too.
        os.environ["DICOMWEB_AUTH"] = "off"
    if args.workers > 1 and "DICOMWEB_IMAGING_WORKERS" not in os.environ:
        os.environ["DICOMWEB_IMAGING_WORKERS"] = str(
            imaging_threads_per_worker(args.workers, os.cpu_count())
        )
    settings = _settings(args.data_dir)
    problem = auth_problem(settings, args.host)
    if problem is not None:
        print(f"dicomweb-server: {problem}", file=sys.stderr)
        return 2
    from dicomweb_server.tls_server import TLSConfigError, resolve_tls_files, serve_tls

    try:
        tls = resolve_tls_files(args.certfile, args.keyfile, args.ca_certs, settings)
    except TLSConfigError as error:
        print(f"dicomweb-server: {error}", file=sys.stderr)
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    status = _prepare_apart() if args.workers > 1 else prepare(settings)
    if status:
        return status
    log = logging.getLogger("dicomweb_server")
    if settings.auth == "off":
        log.warning("authentication is off: only this machine can reach %s", args.host)
    if tls is None and not is_loopback(args.host):
        log.warning("plain HTTP on %s: terminate TLS here (--certfile) or at a proxy", args.host)
    print(
        f"dicomweb-server {__version__}: DICOMweb root "
        f"{'http' if tls is None else 'https'}://{args.host}:{args.port}"
        f"{settings.url_prefix} (data in {settings.data_dir.resolve()})",
        flush=True,
    )
    if settings.metrics:
        from dicomweb_server.metrics.multiprocess import prepare_directory

        # Before any worker starts: workers share their metrics through this directory
        # (inherited through the environment), so every scrape reports all of them.
        prepare_directory(args.workers)
    if tls is not None:
        # HTTPS: Hypercorn, for HTTP/2 (uvicorn has none). Plain HTTP stays on uvicorn:
        # ~1.4x Hypercorn's requests/s on HTTP/1.1, faster bulk data (docs/deployment-tls.md).
        return serve_tls(
            tls,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            access_log=args.access_log,
        )
    options: dict[str, Any] = {
        "factory": True,
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "log_level": args.log_level,
        "access_log": args.access_log,
        "timeout_graceful_shutdown": 30,
    }
    if args.workers > 1 and args.balance == "connections":
        from dicomweb_server.worker_pool import serve

        return serve(uvicorn.Config(APP, **options), args.workers, settings.worker_timeout_seconds)
    uvicorn.run(APP, **options)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = _settings(args.data_dir)
    _upgrade(settings)
    print("schema is up to date")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dicomweb_server.services.archive import Archive
    from dicomweb_server.services.importer import import_paths, iter_files

    settings = _settings(args.data_dir)
    _upgrade(settings)
    paths = [Path(path) for path in args.paths]
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        print(f"error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    total = sum(1 for _ in iter_files(paths))
    archive = Archive.open(settings)
    try:
        with tqdm(total=total, unit="file", disable=args.quiet, file=sys.stderr) as bar:
            summary = import_paths(archive, paths, progress=lambda _path: bar.update(1))
    finally:
        archive.close()
    print(
        f"stored {summary.stored}, already present {summary.already_present}, "
        f"rejected {len(summary.rejected)}, skipped (not DICOM) {summary.skipped}"
    )
    for path, reason in summary.rejected:
        print(f"rejected {path}: {reason}")
    return 1 if summary.rejected else 0


def _add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    # Here rather than beside the audit code: importing that package loads the whole
    # archive, which `serve` keeps out of the supervisor of several workers.
    parser.add_argument("--data-dir", help="data folder (default ./data or DICOMWEB_DATA_DIR)")
    parser.add_argument("--user", help="only records of this user (the token's sub)")
    parser.add_argument("--patient", help="only records naming this Patient ID")
    parser.add_argument("--study", help="only records naming this Study Instance UID")
    parser.add_argument("--event", help="only this event ID, e.g. 110104")
    parser.add_argument("--since", help="only records at or after this ISO 8601 time (UTC)")
    parser.add_argument("--until", help="only records at or before this ISO 8601 time (UTC)")


def cmd_audit(args: argparse.Namespace) -> int:
    from dicomweb_server.audit.cli import list_records

    return list_records(_settings(args.data_dir), args, sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicomweb-server", description="DICOMweb origin server and archive."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the archive over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8042)
    serve.add_argument("--data-dir", help="data folder (default ./data or DICOMWEB_DATA_DIR)")
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--balance",
        choices=("connections", "kernel"),
        default="connections",
        help="with several workers: 'connections' (default) hands each new connection to "
        "the worker with the fewest open ones; 'kernel' lets workers accept from one shared "
        "socket, where a few keep-alive clients can all land on one worker",
    )
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--no-access-log", dest="access_log", action="store_false")
    serve.add_argument(
        "--no-auth",
        action="store_true",
        help="serve without authentication (loopback addresses only; DICOMWEB_AUTH=off)",
    )
    serve.add_argument(
        "--certfile", help="PEM certificate chain: serve HTTPS and HTTP/2 (DICOMWEB_TLS_CERTFILE)"
    )
    serve.add_argument("--keyfile", help="PEM private key of --certfile (DICOMWEB_TLS_KEYFILE)")
    serve.add_argument(
        "--ca-certs",
        help="PEM CA certificates: require client certificates they issued (mutual TLS; "
        "DICOMWEB_TLS_CA_CERTS)",
    )
    serve.set_defaults(handler=cmd_serve)

    db = commands.add_parser("db", help="index database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="migrate the schema to the newest version")
    upgrade.add_argument("--data-dir")
    upgrade.set_defaults(handler=cmd_db_upgrade)

    importer = commands.add_parser("import", help="store DICOM files and folders")
    importer.add_argument("paths", nargs="+")
    importer.add_argument("--data-dir")
    importer.add_argument("--quiet", action="store_true", help="no progress bar")
    importer.set_defaults(handler=cmd_import)

    audit = commands.add_parser(
        "audit", help="list audit records as JSON lines (the reading is itself audited)"
    )
    _add_audit_arguments(audit)
    audit.set_defaults(handler=cmd_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
