"""Server-side TLS for the edge (wss://, https:// SSE) and the push-send API (https://).

`server_context` makes the `ssl.SSLContext` a listener is given: TLS 1.2 or newer, the
certificate chain and key read once at start-up from PEM files, HTTP/1.1 offered over ALPN
(neither listener speaks HTTP/2), no compression, no renegotiation, the server's cipher order.
TLS 1.2 ciphers default to `DEFAULT_CIPHERS` (forward secret, AEAD only); TLS 1.3 suites are
OpenSSL's (all AEAD). A file that cannot be used is a `TlsConfigError` (a ValueError, which the
command line reports as a configuration error, exit status 2), raised before anything listens.

Certificates are read at start-up only: to rotate one, replace the files and restart or drain
the processes (`zuulpush edge --workers N` restarts a drained worker with the new files).
"""

from __future__ import annotations

import ssl

DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""TLS 1.2 cipher suites (OpenSSL syntax): ECDHE key exchange, AES-GCM or ChaCha20-Poly1305."""

ALPN = ("http/1.1",)


class TlsConfigError(ValueError):
    """A certificate, key or cipher setting that cannot be used; the message names which."""


def server_context(cert_file: str, key_file: str = "", *, ciphers: str = DEFAULT_CIPHERS,
                   what: str = "TLS") -> ssl.SSLContext:
    """A server-side context with the chain in `cert_file` (PEM: the certificate, then any
    intermediates) and the private key in `key_file` (PEM, unencrypted; empty: the key is in
    `cert_file` too). `what` starts error messages (which listener, which settings)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
                        | ssl.OP_NO_RENEGOTIATION)
    try:
        context.set_ciphers(ciphers)
    except ssl.SSLError:
        raise TlsConfigError(f"{what}: no usable TLS 1.2 cipher in {ciphers!r}") from None
    context.set_alpn_protocols(list(ALPN))
    try:
        context.load_cert_chain(cert_file, key_file or None, password=_no_password)
    except TlsConfigError as exc:
        raise TlsConfigError(f"{what}: {exc}") from None
    except OSError as exc:  # ssl.SSLError is one
        raise TlsConfigError(f"{what}: {_describe(cert_file, key_file, exc)}") from None
    return context


def optional_context(cert_file: str, key_file: str, *, what: str,
                     ciphers: str = DEFAULT_CIPHERS) -> ssl.SSLContext | None:
    """`server_context` when `cert_file` is set, None (plain TCP) when neither is; `what` names
    the settings in errors (a key without a certificate is one)."""
    if not cert_file:
        if key_file:
            raise TlsConfigError(f"{what}: a key file is set but no certificate file")
        return None
    return server_context(cert_file, key_file, ciphers=ciphers, what=what)


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal, and a worker process would hang.
    raise TlsConfigError("the private key is encrypted: give an unencrypted key file "
                         "(readable by this user only)")


def _describe(cert_file: str, key_file: str, exc: OSError) -> str:
    """Which file is wrong, and how: unreadable, no certificate in it, or no key that fits."""
    if not isinstance(exc, ssl.SSLError):
        files = f"{cert_file!r}" + (f" or {key_file!r}" if key_file else "")
        return f"cannot read {files}: {exc.strerror or exc}"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert_file)
    except (OSError, ValueError):
        return f"no PEM certificate in {cert_file!r}"
    if not key_file:
        return (f"no private key that fits the certificate in {cert_file!r} (give the key "
                f"file)")
    return (f"{key_file!r} is not the PEM private key of the certificate in {cert_file!r} "
            f"({exc.reason or exc})")


__all__ = ["ALPN", "DEFAULT_CIPHERS", "TlsConfigError", "optional_context", "server_context"]
