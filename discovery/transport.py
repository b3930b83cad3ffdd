"""TLS for the DICOM connection, and why a connection gave no association: plain TCP and TLS,
no DICOM (that is :mod:`discovery.dimse`'s). Runs only after a failure, so the extra
connections cost nothing otherwise.
"""

from __future__ import annotations

import socket
import ssl
from typing import TYPE_CHECKING

from discovery.errors import PermanentError

if TYPE_CHECKING:
    from discovery.settings import Settings


def tls_context(settings: Settings) -> tuple[ssl.SSLContext, str] | None:
    if not settings.tls_enabled:
        return None
    try:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=str(settings.tls_ca_file) if settings.tls_ca_file else None,
        )
        ctx.check_hostname = settings.tls_check_hostname
        if not settings.tls_check_hostname and not settings.tls_ca_file:
            ctx.verify_mode = ssl.CERT_NONE
        if settings.tls_cert_file:
            ctx.load_cert_chain(str(settings.tls_cert_file), str(settings.tls_key_file))
    except (OSError, ssl.SSLError) as exc:
        raise PermanentError(f"TLS files cannot be loaded ({exc}): check DISCOVERY_TLS_*") from None
    return ctx, settings.pacs_host


def why_no_connection(s: Settings) -> tuple[str, bool]:
    """Why no association came, and whether a setting must change (``True``) rather than the
    network or the PACS recover: refused, unreachable and timed out are told apart with one
    plain TCP connect; TLS trouble (certificate, host name, TLS on one side only) with one TLS
    handshake. Runs only after a failure, so the extra connections cost nothing otherwise."""
    try:
        with socket.create_connection((s.pacs_host, s.pacs_port), timeout=s.connect_timeout):
            pass
    except socket.gaierror:
        return f"host name {s.pacs_host!r} does not resolve", False
    except ConnectionRefusedError:
        return "connection refused (nothing listens there)", False
    except TimeoutError:
        return f"no answer within {s.connect_timeout:g} s", False
    except OSError as exc:
        return exc.strerror or str(exc), False
    if s.tls_enabled:
        tls = tls_context(s)
        assert tls is not None
        return _tls_trouble(s, _handshake(s, tls[0], s.connect_timeout))
    # A TLS server answers a ClientHello at once; a silent DICOM server must not cost long.
    if _speaks_tls(_handshake(s, _any_server(), min(3.0, s.connect_timeout))):
        return (
            "the port speaks DICOM TLS: set DISCOVERY_TLS_ENABLED=true and "
            "DISCOVERY_TLS_CA_FILE (and DISCOVERY_TLS_CERT_FILE/KEY_FILE if the PACS asks "
            "for a client certificate)"
        ), True
    return (
        "the port accepts connections but no DICOM association answer came within "
        f"DISCOVERY_ACSE_TIMEOUT ({s.acse_timeout:g} s)"
    ), False


# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH = (62, 64)
_NOT_TLS = (
    "WRONG_VERSION_NUMBER",
    "UNEXPECTED_EOF_WHILE_READING",
    "RECORD_LAYER_FAILURE",
    "PACKET_LENGTH_TOO_LONG",
    "HTTP_REQUEST",
    "UNKNOWN_PROTOCOL",
)


def _any_server() -> ssl.SSLContext:
    """A TLS client context that accepts any certificate: only to find out whether the port
    speaks TLS at all."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _handshake(s: Settings, ctx: ssl.SSLContext, timeout: float) -> OSError | None:
    """One TLS handshake with ``ctx``: the error, or ``None`` when the PACS accepted it. With
    TLS 1.3 a refused client certificate arrives as an alert just after the handshake, so we
    wait briefly for it."""
    try:
        with (
            socket.create_connection((s.pacs_host, s.pacs_port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=s.pacs_host) as conn,
        ):
            conn.settimeout(min(1.0, s.connect_timeout))
            try:
                conn.recv(1)
            except TimeoutError:
                pass
    except OSError as exc:  # ssl.SSLError is an OSError
        return exc
    return None


def _speaks_tls(error: OSError | None) -> bool:
    if error is None:
        return True
    if not isinstance(error, ssl.SSLError) or isinstance(error, ssl.SSLEOFError):
        return False
    return (error.reason or "") not in _NOT_TLS


def _tls_trouble(s: Settings, error: OSError | None) -> tuple[str, bool]:
    """A failed DICOM TLS association, explained by the handshake's own error."""
    if error is None:
        return "the TLS handshake succeeds but no DICOM association answer came", False
    if isinstance(error, ssl.SSLCertVerificationError):
        why = error.verify_message or error.reason or "not trusted"
        if error.verify_code in _NAME_MISMATCH:
            return (
                f"the PACS's TLS certificate does not name {s.pacs_host} ({why}): set "
                "DISCOVERY_PACS_HOST to a name in the certificate, or "
                "DISCOVERY_TLS_CHECK_HOSTNAME=false"
            ), True
        return (
            f"the PACS's TLS certificate is not trusted ({why}): set DISCOVERY_TLS_CA_FILE "
            "to the CA that signed it"
        ), True
    if isinstance(error, ssl.SSLError) and _speaks_tls(error):
        return (
            f"the PACS ended the TLS handshake ({error.reason or error}): check "
            "DISCOVERY_TLS_CERT_FILE and DISCOVERY_TLS_KEY_FILE (a client certificate the "
            "PACS trusts)"
        ), True
    if isinstance(error, ssl.SSLError | ConnectionResetError):
        return (
            f"the port does not speak TLS ({getattr(error, 'reason', None) or error}): "
            "set DISCOVERY_TLS_ENABLED=false or DISCOVERY_PACS_PORT to the PACS's TLS "
            "port"
        ), True
    if isinstance(error, TimeoutError):
        return f"no TLS handshake within {s.connect_timeout:g} s", False
    return f"the TLS handshake failed ({error})", False
