"""discovery.settings: every invalid value stops with one line naming its DISCOVERY_ variable;
secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from discovery.settings import (
    Settings,
    SettingsError,
    load_settings,
    mask_secrets,
    mask_url,
    validate_ae_title,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DISCOVERY_* from the caller's shell, and no .env from the working directory."""
    import os

    for name in list(os.environ):
        if name.startswith("DISCOVERY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def error_for(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> str:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{name}: "), message
    return message


@pytest.mark.parametrize(("name", "value", "words"), [
    ("DISCOVERY_PACS_PORT", "0", "greater than or equal to 1"),
    ("DISCOVERY_PACS_PORT", "70000", "less than or equal to 65535"),
    ("DISCOVERY_PACS_PORT", "abc", "valid integer"),
    ("DISCOVERY_CALLED_AET", "A" * 17, "at most 16"),
    ("DISCOVERY_CALLING_AET", "AB\\CD", "backslash"),
    ("DISCOVERY_CALLING_AET", "   ", "must not be empty"),
    ("DISCOVERY_CALLING_AET", "AB\tCD", "control characters"),
    ("DISCOVERY_WINDOW_MINUTES", "0", "greater than or equal to 1"),
    ("DISCOVERY_WINDOW_MINUTES", "-1", "greater than or equal to 1"),
    ("DISCOVERY_WINDOW_MINUTES", "1441", "less than or equal to 1440"),
    ("DISCOVERY_BROKER_URL", "amqp://guest:guest@localhost//", "redis:// or rediss://"),
    ("DISCOVERY_BROKER_URL", "localhost:6379", "redis:// or rediss://"),
    ("DISCOVERY_MAX_ATTEMPTS", "0", "greater than or equal to 1"),
    ("DISCOVERY_DIMSE_TIMEOUT", "0", "greater than 0"),
    ("DISCOVERY_LOG_LEVEL", "LOUD", "DEBUG"),
    ("DISCOVERY_DAY_SWEEP", "perhaps", "valid boolean"),
])
def test_invalid_value_one_line(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                words: str) -> None:
    message = error_for(monkeypatch, name, value)
    assert words in message


def test_url_values_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    message = error_for(monkeypatch, "DISCOVERY_BROKER_URL", "amqp://me:s3cret@host//")
    assert "s3cret" not in message and "me:" not in message


def test_values_shown_when_harmless(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "(got '70000')" in error_for(monkeypatch, "DISCOVERY_PACS_PORT", "70000")


def test_tls_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DISCOVERY_TLS_ENABLED", "true")
    monkeypatch.setenv("DISCOVERY_TLS_CA_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(SettingsError, match=r"^DISCOVERY_TLS_CA_FILE: no such file: "):
        load_settings()
    (tmp_path / "ca.pem").write_text("x")
    monkeypatch.setenv("DISCOVERY_TLS_CA_FILE", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("DISCOVERY_TLS_CERT_FILE", str(tmp_path / "ca.pem"))
    with pytest.raises(SettingsError, match="TLS_CERT_FILE and DISCOVERY_TLS_KEY_FILE go"):
        load_settings()


def test_valid_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCOVERY_CALLED_AET", " ORTHANC ")
    monkeypatch.setenv("DISCOVERY_LOG_LEVEL", "debug")
    monkeypatch.setenv("DISCOVERY_WINDOW_MINUTES", "1440")
    monkeypatch.setenv("DISCOVERY_PACS_PORT", "65535")
    monkeypatch.setenv("DISCOVERY_BROKER_URL", "rediss://:pw@broker:6380/1")
    s = load_settings()
    assert (s.called_aet, s.log_level, s.window_minutes) == ("ORTHANC", "DEBUG", 1440)
    assert s.pacs_label == "ORTHANC@127.0.0.1:65535"
    assert s.masked()["broker_url"] == "rediss://:***@broker:6380/1"
    assert "pw" not in str(s.masked())


def test_dotenv_read_from_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DISCOVERY_PACS_PORT=11112\n")
    assert Settings().pacs_port == 11112


def test_validate_ae_title() -> None:
    assert validate_ae_title("A" * 16) == "A" * 16
    for bad in ("", "A" * 17, "A\\B", "A\x7fB"):
        with pytest.raises(ValueError):
            validate_ae_title(bad)


@pytest.mark.parametrize(("url", "masked"), [
    ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
    ("redis://user:secret@host/0", "redis://user:***@host/0"),
    ("rediss://:p%40ss@host", "rediss://:***@host"),
    ("redis://:secret@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
    ("redis://host:6379/0", "redis://host:6379/0"),
    ("redis://user@host/0", "redis://user@host/0"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_secrets() -> None:
    text = ("Error 111 connecting to redis://:hunter2@10.0.0.5:6379/0; "
            "fallback amqp://guest:guest@localhost// failed")
    out = mask_secrets(text)
    assert "hunter2" not in out and "guest@" not in out
    assert out == ("Error 111 connecting to redis://:***@10.0.0.5:6379/0; "
                   "fallback amqp://guest:***@localhost// failed")
    assert mask_secrets("no url here: host:6379") == "no url here: host:6379"


def test_password_with_at_sign_masked_whole() -> None:
    out = mask_secrets("cannot reach redis://:p@ss@host:6379/0 now")
    assert out == "cannot reach redis://:***@host:6379/0 now"


def test_empty_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`.env.example` ships `DISCOVERY_TLS_CA_FILE=` empty: that must mean the default."""
    monkeypatch.setenv("DISCOVERY_TLS_CA_FILE", "")
    monkeypatch.setenv("DISCOVERY_PACS_PORT", "")
    s = Settings()
    assert s.tls_ca_file is None
    assert s.pacs_port == 104


def test_a_discovery_name_that_is_no_setting_is_named() -> None:
    from discovery.settings import unknown_setting

    assert unknown_setting(["PATH", "DISCOVERY_PACS_HOST", "discovery_output"]) is None
    assert unknown_setting(["DISCOVERY_WINDOW_MINUTE"]) == (
        "DISCOVERY_WINDOW_MINUTE is not a setting: did you mean DISCOVERY_WINDOW_MINUTES?")
    assert unknown_setting(["discovery_pacs_prot"]) == (
        "DISCOVERY_PACS_PROT is not a setting: did you mean DISCOVERY_PACS_PORT?")
    assert unknown_setting(["DISCOVERY_FOO", "DISCOVERY_PACS_HOST"]) == (
        "DISCOVERY_FOO is not a setting: see .env.example for the settings")


def test_load_settings_refuses_an_unknown_name_in_env_and_dotenv(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from discovery.settings import SettingsError, load_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCOVERY_DAY_SWEEPS", "false")
    with pytest.raises(SettingsError, match="DISCOVERY_DAY_SWEEPS is not a setting: did you "
                                            "mean DISCOVERY_DAY_SWEEP"):
        load_settings()
    monkeypatch.delenv("DISCOVERY_DAY_SWEEPS")
    (tmp_path / ".env").write_text("DISCOVERY_CALLING_AE=ME\n")
    with pytest.raises(SettingsError, match="DISCOVERY_CALLING_AE is not a setting"):
        load_settings()


def test_an_empty_value_counts_as_not_set(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    """What .env.example and README say: an empty variable in the environment does not
    override .env (its value applies), an empty one in .env gives the default; a value of
    spaces is a value (refused where it is not valid)."""
    from discovery.settings import SettingsError, load_settings

    monkeypatch.chdir(tmp_path)
    for name in ("DISCOVERY_PACS_PORT", "DISCOVERY_CALLED_AET", "DISCOVERY_PACS_HOST"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text("DISCOVERY_PACS_PORT=4242\nDISCOVERY_CALLED_AET=\n")
    monkeypatch.setenv("DISCOVERY_PACS_PORT", "")
    monkeypatch.setenv("DISCOVERY_PACS_HOST", "")
    s = load_settings()
    assert (s.pacs_port, s.called_aet, s.pacs_host) == (4242, "ANY-SCP", "127.0.0.1")
    monkeypatch.setenv("DISCOVERY_PACS_PORT", " ")
    with pytest.raises(SettingsError, match="DISCOVERY_PACS_PORT: Input should be a valid "
                                            "integer"):
        load_settings()


def test_a_file_setting_of_spaces_is_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCOVERY_TLS_CA_FILE", "  ")
    assert Settings().tls_ca_file is None
