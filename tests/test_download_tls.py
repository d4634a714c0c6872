"""A host whose TLS certificate fails verification: a clear message with the manual path."""

from __future__ import annotations

import dataclasses
import http.server
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from regbench import cli
from regbench.data.datasets.deepfluoro import DeepFluoro


@pytest.fixture()
def self_signed_https(tmp_path: Path):
    """An HTTPS server on 127.0.0.1 with a self-signed certificate (no client trusts it)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_certificate_failure_is_a_clear_message_not_a_traceback(
    self_signed_https, tmp_path, monkeypatch, capsys
):
    url = f"{self_signed_https}/ipcai_2020_full_res_data.zip"
    source = dataclasses.replace(DeepFluoro.source, url=url)
    monkeypatch.setattr(DeepFluoro, "source", source)
    root = tmp_path / "data" / "deepfluoro"
    rc = cli.main(
        [
            "download",
            "--dataset",
            "deepfluoro",
            "--file",
            source.member,
            "--root",
            str(root),
            "--settings",
            '{"download": {}}',
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    assert "TLS certificate of 127.0.0.1 could not be verified" in err
    assert str(root.absolute() / source.filename) in err  # where to put the file by hand
    assert "attempts" not in err  # not retried: the same certificate comes back every time
