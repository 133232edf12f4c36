"""`zuulpush.tls`: the server contexts, the errors for files that cannot be used, and the TLS
settings of `serve`, `edge` and `api` reaching their configs (no sockets here)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from router.config import ApiConfig
from tests.support.certs import Certificate, make_certificate
from zuulpush.cli import build_parser, main
from zuulpush.cli.options import api_flags, edge_limit_flags
from zuulpush.config import build, load_settings
from zuulpush.edge.config import EdgeConfig
from zuulpush.tls import ALPN, TlsConfigError, optional_context, server_context


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


def test_a_server_context_is_tls_1_2_or_newer_without_compression_or_renegotiation(
        cert: Certificate) -> None:
    context = server_context(str(cert.cert_file), str(cert.key_file))
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_NONE  # devices present no certificate
    for option in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION,
                   ssl.OP_CIPHER_SERVER_PREFERENCE):
        assert context.options & option
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["aead"] and c["kea"] == "kx-ecdhe" for c in tls12)
    assert ALPN == ("http/1.1",)


def test_the_key_may_be_in_the_certificate_file(cert: Certificate, tmp_path: Path) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(cert.cert_file.read_bytes() + cert.key_file.read_bytes())
    assert isinstance(server_context(str(both)), ssl.SSLContext)


def test_no_certificate_is_plain_tcp_and_a_key_alone_is_an_error(cert: Certificate) -> None:
    assert optional_context("", "", what="x") is None
    with pytest.raises(TlsConfigError, match="a key file is set but no certificate file"):
        optional_context("", str(cert.key_file), what="x")


def test_unusable_files_say_which_and_why(cert: Certificate, tmp_path: Path) -> None:
    other = make_certificate(tmp_path, "other")
    encrypted = tmp_path / "encrypted.key"
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(cert.key_file.read_bytes(), None)
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    cases = {
        (str(tmp_path / "missing.crt"), str(cert.key_file)): "cannot read",
        (str(cert.key_file), str(cert.key_file)): "no PEM certificate in",
        (str(cert.cert_file), ""): "no private key that fits",
        (str(cert.cert_file), str(other.key_file)): "is not the PEM private key",
        (str(cert.cert_file), str(encrypted)): "the private key is encrypted",
    }
    for (cert_file, key_file), message in cases.items():
        with pytest.raises(TlsConfigError, match=message) as caught:
            optional_context(cert_file, key_file, what="edge TLS")
        assert str(caught.value).startswith("edge TLS: ")


def test_ciphers_that_leave_none_are_refused(cert: Certificate) -> None:
    with pytest.raises(TlsConfigError, match=r"no usable TLS 1\.2 cipher"):
        server_context(str(cert.cert_file), str(cert.key_file), ciphers="NOT-A-CIPHER")


TLS_FLAGS = ["--tls-cert", "e.crt", "--tls-key", "e.key"]
API_TLS_FLAGS = ["--api-tls-cert", "a.crt", "--api-tls-key", "a.key"]


@pytest.mark.parametrize("command", [["serve"], ["edge", "--redis", "redis://127.0.0.1:1/0"]])
def test_tls_flags_reach_the_edge_config(command: list[str]) -> None:
    args = build_parser().parse_args([*command, *TLS_FLAGS])
    config = build(EdgeConfig, load_settings(None, edge_limit_flags(args), environ={}))
    assert (config.tls_cert_file, config.tls_key_file) == ("e.crt", "e.key")


@pytest.mark.parametrize("command", [["serve"], ["api", "--redis", "redis://127.0.0.1:1/0"]])
def test_api_tls_flags_reach_the_api_config(command: list[str]) -> None:
    args = build_parser().parse_args([*command, *API_TLS_FLAGS])
    config = build(ApiConfig, load_settings(None, api_flags(args), environ={}))
    assert (config.api_tls_cert_file, config.api_tls_key_file) == ("a.crt", "a.key")


def test_tls_settings_come_from_the_environment_too() -> None:
    settings = load_settings(None, {}, environ={"ZUULPUSH_TLS_CERT_FILE": "/etc/e.pem",
                                                "ZUULPUSH_API_TLS_CERT_FILE": "/etc/a.pem"})
    assert build(EdgeConfig, settings).tls_cert_file == "/etc/e.pem"
    assert build(ApiConfig, settings).api_tls_cert_file == "/etc/a.pem"


@pytest.mark.parametrize("flags", [["--tls-cert", "/nonexistent/edge.crt"],
                                   ["--api-tls-key", "/nonexistent/api.key"]])
def test_serve_with_an_unusable_tls_setting_exits_2_before_listening(
        flags: list[str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("zuulpush.cli.options.start_logging", lambda args, settings: None)
    assert main(["serve", "--port", "0", "--api-port", "0", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zuulpush: ") and "TLS" in err
