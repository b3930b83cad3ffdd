"""`.env.example` documents every setting with its true default (and nothing else); README
names every setting."""

from __future__ import annotations

from pathlib import Path

from discovery.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


def _documented() -> dict[str, str]:
    out = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith(ENV_PREFIX) and "=" in line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


def _shown(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_setting_documented_with_its_default() -> None:
    documented = _documented()
    fields = {ENV_PREFIX + name.upper(): f.default for name, f in Settings.model_fields.items()}
    assert set(documented) == set(fields)
    for key, default in fields.items():
        assert documented[key] == _shown(default), key


def test_readme_names_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [ENV_PREFIX + name.upper() for name in Settings.model_fields
               if f"`{ENV_PREFIX}{name.upper()}`" not in readme]
    assert missing == []
