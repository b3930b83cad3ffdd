"""Settings: one typed object, read from the environment (prefix ``DISCOVERY_``) and ``.env``.

Every field is documented in ``.env.example`` with its default. An invalid value stops the
program with one line naming the variable (see :func:`load_settings`).
"""

from __future__ import annotations

import difflib
import os
import re
import ssl
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from dotenv import dotenv_values
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "DISCOVERY_"


class SettingsError(Exception):
    """A setting has an invalid value; the message names the variable and what is wrong."""


def validate_ae_title(value: str) -> str:
    """An AE title (PS3.5 6.2, VR AE): 1-16 characters, no backslash, no control characters."""
    stripped = value.strip()
    if not stripped:
        raise ValueError("must not be empty")
    if len(stripped) > 16:
        raise ValueError(f"is {len(stripped)} characters long; an AE title has at most 16")
    if "\\" in stripped or any(ord(c) < 32 or ord(c) == 127 for c in stripped):
        raise ValueError("must not contain a backslash or control characters")
    return stripped


class Settings(BaseSettings):
    """Everything pacs-discovery can be told; DICOM's own words where DICOM has one."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore",
        env_ignore_empty=True,
    )

    # The PACS
    pacs_host: str = "127.0.0.1"
    pacs_port: int = Field(104, ge=1, le=65535)
    called_aet: str = "ANY-SCP"
    calling_aet: str = "PACS-DISCOVERY"
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(120.0, gt=0)
    network_timeout: float = Field(60.0, gt=0)
    connect_timeout: float = Field(10.0, gt=0)
    pacs_max_results: int = Field(0, ge=0)
    pacs_max_associations: int = Field(2, ge=1, le=256)
    pacs_max_queries_per_second: float = Field(0.0, ge=0)
    tcp_nodelay: bool = True

    # DICOM TLS
    tls_enabled: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_check_hostname: bool = True

    # The broker and the aggregator's store
    broker_url: str = "redis://127.0.0.1:6379/0"
    broker_ca_file: Path | None = None
    broker_cert_file: Path | None = None
    broker_key_file: Path | None = None
    state_dir: Path = Path("state")
    output: Path = Path("dicom_query_results.csv")

    # How the range is cut and checked
    window_minutes: int = Field(60, ge=1, le=1440)
    day_sweep: bool = True
    day_sweep_max_results: int = Field(10000, ge=1)

    # Retries and the watchdog
    max_attempts: int = Field(6, ge=1, le=100)
    retry_backoff: float = Field(2.0, gt=0)
    retry_backoff_max: float = Field(60.0, gt=0)
    redispatch_after: float = Field(600.0, ge=1)
    visibility_timeout: int = Field(7200, ge=5)
    watchdog_interval: float = Field(30.0, ge=1)
    association_lease: float = Field(60.0, ge=5)
    association_idle_seconds: float = Field(2.0, ge=0)
    association_hold_seconds: float = Field(2.0, ge=0)
    worker_associations: int = Field(0, ge=0, le=256)

    # Logs
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("called_aet", "calling_aet")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return validate_ae_title(value)

    @field_validator(
        "tls_ca_file",
        "tls_cert_file",
        "tls_key_file",
        "broker_ca_file",
        "broker_cert_file",
        "broker_key_file",
        mode="before",
    )
    @classmethod
    def _no_file(cls, value: object) -> object:
        # `DISCOVERY_TLS_CA_FILE=` (as in .env.example) means no file, not the directory ".".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("redis", "rediss"):
            raise ValueError(f"must be a redis:// or rediss:// URL, not {scheme or 'no scheme'}")
        return value

    @model_validator(mode="after")
    def _tls_files(self) -> Settings:
        groups = []
        if self.tls_enabled:
            groups.append("tls")
        if urlsplit(self.broker_url).scheme == "rediss":
            groups.append("broker")
        for group in groups:
            for name in (f"{group}_ca_file", f"{group}_cert_file", f"{group}_key_file"):
                path = getattr(self, name)
                if path is not None and not Path(path).is_file():
                    raise ValueError(f"{ENV_PREFIX}{name.upper()}: no such file: {path}")
            if (getattr(self, f"{group}_cert_file") is None) != (
                getattr(self, f"{group}_key_file") is None
            ):
                g = group.upper()
                raise ValueError(
                    f"{ENV_PREFIX}{g}_CERT_FILE and {ENV_PREFIX}{g}_KEY_FILE go together"
                )
        return self

    def broker_ssl(self) -> dict[str, object]:
        """TLS options for a ``rediss://`` broker, the same keys for kombu's ``broker_use_ssl``
        and for redis-py: the broker's certificate is always verified (against
        ``DISCOVERY_BROKER_CA_FILE``, or the system's CAs), because kombu would otherwise
        accept any certificate; a client certificate is sent if one is set. Empty for
        ``redis://``."""
        if urlsplit(self.broker_url).scheme != "rediss":
            return {}
        opts: dict[str, object] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        if self.broker_ca_file:
            opts["ssl_ca_certs"] = str(self.broker_ca_file)
        if self.broker_cert_file:
            opts["ssl_certfile"] = str(self.broker_cert_file)
            opts["ssl_keyfile"] = str(self.broker_key_file)
        return opts

    @property
    def pacs_label(self) -> str:
        """Where queries go, for logs and reports: ``AET@host:port``."""
        return f"{self.called_aet}@{self.pacs_host}:{self.pacs_port}"

    def masked(self) -> dict[str, object]:
        """The effective settings with secrets masked, for logs and reports."""
        data = self.model_dump(mode="json")
        data["broker_url"] = mask_url(self.broker_url)
        return data


def mask_url(url: str) -> str:
    """``redis://:secret@host/0`` -> ``redis://:***@host/0``; URLs without a password unchanged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]  # as written: keeps an IPv6 host's brackets
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


_URL_IN_TEXT = re.compile(r"\w+://\S+")


def mask_secrets(text: str) -> str:
    """Mask the password of any URL found inside free text (error messages)."""
    return _URL_IN_TEXT.sub(lambda m: mask_url(m.group()), text)


def describe_validation_error(exc: ValidationError) -> str:
    """One line: the first invalid variable and what is wrong with it."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "__root__"]
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if loc:
        var = ENV_PREFIX + loc[0].upper()
        value = err.get("input")
        shown = "" if "password" in var.lower() or "url" in var.lower() else f" (got {value!r})"
        return f"{var}: {msg}{shown}"
    return msg


def unknown_setting(names: Iterable[str]) -> str | None:
    """A one-line complaint about the first ``DISCOVERY_*`` name that is no setting (a typo
    such as ``DISCOVERY_WINDOW_MINUTE`` would otherwise be ignored without a word), or None."""
    known = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    odd = sorted({n.upper() for n in names if n.upper().startswith(ENV_PREFIX)} - known)
    if not odd:
        return None
    close = difflib.get_close_matches(odd[0], sorted(known), n=1, cutoff=0.85)
    hint = f": did you mean {close[0]}?" if close else ": see .env.example for the settings"
    return f"{odd[0]} is not a setting{hint}"


def load_settings(**overrides: object) -> Settings:
    """Build the settings, raising :class:`SettingsError` with a one-line message."""
    env_file = Settings.model_config.get("env_file")
    names = list(os.environ)
    if isinstance(env_file, str) and os.path.isfile(env_file):
        names += [k for k in dotenv_values(env_file) if k]
    complaint = unknown_setting(names)
    if complaint:
        raise SettingsError(complaint)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (workers build them once)."""
    return load_settings()
