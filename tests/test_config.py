"""Settings from env/TOML, and programme files validated with errors naming file and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loyalty.programme import ConfigError, load_programme
from loyalty.settings import load_settings
from tests.conftest import REPO_ROOT


def test_settings_layer_env_over_toml_over_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "loyalflow.toml"
    toml.write_text('database_url = "sqlite:///from-toml.db"\nchunk_size = 123\n'
                    '[twilio]\nfrom_number = "+15145550000"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOYALFLOW_CONFIG_FILE", str(toml))
    monkeypatch.setenv("LOYALFLOW_CHUNK_SIZE", "777")
    monkeypatch.setenv("LOYALFLOW_TWILIO__AUTH_TOKEN", "tok-secret-123")
    settings = load_settings()
    assert settings.database_url == "sqlite:///from-toml.db"
    assert settings.chunk_size == 777
    assert settings.twilio.from_number == "+15145550000"
    assert settings.twilio.auth_token is not None
    assert settings.twilio.auth_token.get_secret_value() == "tok-secret-123"
    assert "tok-secret-123" not in repr(settings) and "tok-secret-123" not in settings.model_dump_json()


def test_defaults_without_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOYALFLOW_CONFIG_FILE", raising=False)
    settings = load_settings()
    assert settings.database_url == "sqlite:///var/loyalflow.db"
    assert settings.sendgrid.api_key is None


def test_shipped_programme_is_valid() -> None:
    programme = load_programme(REPO_ROOT / "config")
    assert [t.code for t in programme.tiers.tiers] == ["member", "silver", "gold", "platinum"]
    assert programme.points_for(1000, "beauty", "gold") == 45  # 10 $ x 1 x 3 (beauty) x 1.5 (gold)
    assert programme.points_for(-500, "beauty", "gold") == 0


@pytest.mark.parametrize(("file", "text", "message"), [
    ("tiers.yaml", "tiers:\n  - {code: member, name: M, threshold: 10}\n", "threshold 0"),
    ("tiers.yaml", "tiers:\n  - {code: member, name: M, threshold: 0, perks: nope}\n", "tiers.0.perks"),
    ("offers.yaml", "offers:\n  - {code: x, name: X, kind: teleport, value: 1, cost_cents: 1}\n", "offers.0.kind"),
    ("offers.yaml", "offers:\n  - {code: x, name: X, kind: free_item, value: 1, cost_cents: 1, min_tier: diamond}\n",
     "diamond"),
    ("programme.yaml", "name: [unclosed\n", "not valid YAML"),
])
def test_bad_config_names_file_and_field(tmp_path: Path, file: str, text: str, message: str) -> None:
    config = tmp_path / "config"
    shutil.copytree(REPO_ROOT / "config", config)
    (config / file).write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        load_programme(config)
    assert file in str(error.value)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"programme\.yaml: file not found"):
        load_programme(tmp_path)
