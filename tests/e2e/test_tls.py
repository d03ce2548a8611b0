"""``serve --certfile --keyfile``: TLS 1.2+, HTTP/2 by ALPN, HTTP/1.1 still served."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
import trustme

from tests.dicom_files import instance_path, make_ct, multipart, split_multipart, stow_content_type
from tests.e2e.server import ServerProcess

ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class Certificates:
    ca: trustme.CA
    certfile: Path
    keyfile: Path
    ca_file: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts the test CA (and nothing else)."""
        context = ssl.create_default_context()
        context.load_verify_locations(cadata=self.ca.cert_pem.bytes().decode())
        return context


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, ca_file = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    certfile.write_bytes(b"".join(pem.bytes() for pem in server_cert.cert_chain_pems))
    keyfile.write_bytes(server_cert.private_key_pem.bytes())
    ca_file.write_bytes(ca.cert_pem.bytes())
    return Certificates(ca, certfile, keyfile, ca_file)


def tls_server(data_dir: Path, certs: Certificates, *extra: str) -> ServerProcess:
    return ServerProcess(
        data_dir,
        env={"DICOMWEB_AUTH": "off"},
        args=["--certfile", str(certs.certfile), "--keyfile", str(certs.keyfile), *extra],
        scheme="https",
        verify=certs.client_context(),
    )


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[ServerProcess]:
    process = tls_server(tmp_path_factory.mktemp("archive") / "data", certificates)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def h2(server: ServerProcess, certificates: Certificates) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.root, http2=True, verify=certificates.client_context(), timeout=60
    ) as client:
        yield client


def test_stow_qido_and_wado_over_http2(h2: httpx.Client) -> None:
    instance = make_ct(patient_id="TLS-1")
    stored = h2.post(
        "/studies", content=multipart([instance]), headers={"Content-Type": stow_content_type()}
    )
    assert stored.status_code == 200, stored.text
    assert stored.http_version == "HTTP/2"

    found = h2.get("/instances", params={"PatientID": "TLS-1"})
    assert found.status_code == 200
    assert found.http_version == "HTTP/2"
    assert len(found.json()) == 1

    retrieved = h2.get(instance_path(instance), headers={"Accept": ANY})
    assert retrieved.status_code == 200
    assert retrieved.http_version == "HTTP/2"
    parts = list(split_multipart(retrieved.content, retrieved.headers["content-type"]))
    assert [content for _headers, content in parts] == [instance]


def test_bulk_data_uris_are_https(h2: httpx.Client, server: ServerProcess) -> None:
    instance = make_ct()
    h2.post(
        "/studies", content=multipart([instance]), headers={"Content-Type": stow_content_type()}
    ).raise_for_status()
    metadata = h2.get(instance_path(instance) + "/metadata")
    assert metadata.status_code == 200
    uri: str = metadata.json()[0]["7FE00010"]["BulkDataURI"]
    assert uri.startswith(f"https://127.0.0.1:{server.port}/dicom-web/studies/")
    pixels = h2.get(uri, headers={"Accept": "multipart/related; type=application/octet-stream"})
    assert pixels.status_code == 200
    assert pixels.http_version == "HTTP/2"


def test_http11_clients_are_still_served(server: ServerProcess, certificates: Certificates) -> None:
    instance = make_ct(patient_id="TLS-HTTP11")
    with httpx.Client(base_url=server.root, verify=certificates.client_context()) as client:
        stored = client.post(
            "/studies", content=multipart([instance]), headers={"Content-Type": stow_content_type()}
        )
        found = client.get("/instances", params={"PatientID": "TLS-HTTP11"})
        retrieved = client.get(instance_path(instance), headers={"Accept": ANY})
    assert stored.status_code == 200, stored.text
    assert found.status_code == 200
    assert len(found.json()) == 1
    assert retrieved.status_code == 200
    assert [
        content
        for _h, content in split_multipart(retrieved.content, retrieved.headers["content-type"])
    ] == [instance]
    assert {stored.http_version, found.http_version, retrieved.http_version} == {"HTTP/1.1"}


@pytest.mark.parametrize(
    ("offered", "selected"),
    [(["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1"), (None, None)],
)
def test_alpn_and_tls_versions(
    server: ServerProcess,
    certificates: Certificates,
    offered: list[str] | None,
    selected: str | None,
) -> None:
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = certificates.client_context()
        context.minimum_version = context.maximum_version = version
        if offered is not None:
            context.set_alpn_protocols(offered)
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock,
            context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() == version.name.replace("_", ".")
            assert tls.selected_alpn_protocol() == selected


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_tls_before_1_2_is_refused(
    server: ServerProcess, certificates: Certificates, version: str
) -> None:
    context = certificates.client_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the old versions themselves
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer the old versions
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = getattr(ssl.TLSVersion, version)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock,
        pytest.raises(ssl.SSLError) as refused,
    ):
        context.wrap_socket(sock, server_hostname="127.0.0.1")
    # The client did offer the old version; it was the server that refused it.
    assert refused.value.reason not in {"NO_PROTOCOLS_AVAILABLE", "NO_CIPHERS_AVAILABLE"}


def test_plain_http_to_the_tls_port_fails(server: ServerProcess) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{server.port}/readyz", timeout=10)


def test_untrusted_clients_do_not_trust_the_server(server: ServerProcess) -> None:
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/readyz", timeout=10)  # the system CAs know no test CA


def test_mutual_tls_with_workers_and_graceful_stop(
    tmp_path: Path, certificates: Certificates
) -> None:
    """--ca-certs requires client certificates; --workers 2 over TLS; SIGTERM exits 0, soon,
    even with a client holding an idle keep-alive connection open."""
    server = tls_server(
        tmp_path / "data", certificates, "--ca-certs", str(certificates.ca_file), "--workers", "2"
    )
    client_cert = certificates.ca.issue_cert("archive-client@example.org")
    with_cert = certificates.client_context()
    client_cert.configure_cert(with_cert)
    server.verify = with_cert
    server.start()
    process = server.process
    assert process is not None
    try:
        with httpx.Client(base_url=server.root, http2=True, verify=with_cert) as client:
            for n in range(4):
                instance = make_ct(patient_id="MTLS", instance_number=n)
                stored = client.post(
                    "/studies",
                    content=multipart([instance]),
                    headers={"Content-Type": stow_content_type()},
                )
                assert stored.status_code == 200, stored.text
                assert stored.http_version == "HTTP/2"
            assert len(client.get("/instances", params={"PatientID": "MTLS"}).json()) == 4
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{server.url}/readyz", verify=certificates.client_context(), timeout=10)
        workers = psutil.Process(process.pid).children(recursive=True)
        assert len([p for p in workers if "python" in p.name().lower()]) >= 2
    finally:
        with httpx.Client(verify=with_cert) as idle:
            idle.get(f"{server.url}/healthz").raise_for_status()  # stays open, never reads
            process.send_signal(signal.SIGTERM)
            try:
                # Not asyncio's 30 s wait for the idle client's TLS close (TLS_SHUTDOWN_TIMEOUT).
                assert process.wait(20) == 0, server.log()
            finally:
                server.stop()
    assert "Traceback" not in server.log()


def serve(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomweb_server.cli", "serve", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DICOMWEB_AUTH": "off"},
    )


def test_certificate_without_key_is_a_usage_error(
    tmp_path: Path, certificates: Certificates
) -> None:
    result = serve(tmp_path / "data", "--certfile", str(certificates.certfile))
    assert result.returncode == 2
    assert "--keyfile" in result.stderr
    assert not (tmp_path / "data").exists()  # refused before touching anything

    result = serve(tmp_path / "data", "--keyfile", str(certificates.keyfile))
    assert result.returncode == 2
    assert "--certfile" in result.stderr


def test_unusable_key_is_a_usage_error(tmp_path: Path, certificates: Certificates) -> None:
    other_key = trustme.CA().issue_cert("localhost").private_key_pem
    other_key.write_to_path(str(tmp_path / "other-key.pem"))
    result = serve(
        tmp_path / "data",
        "--certfile",
        str(certificates.certfile),
        "--keyfile",
        str(tmp_path / "other-key.pem"),
    )
    assert result.returncode == 2
    assert "cannot load the certificate" in result.stderr
