"""One settings object for the whole application.

Values come, highest priority first, from keyword arguments, environment variables
(prefix ``LOYALFLOW_``, nested with ``__``, e.g. ``LOYALFLOW_SENDGRID__API_KEY``), a ``.env``
file, ``config/loyalflow.toml`` and finally the defaults below. Build it with
:func:`load_settings` at the edge of the program (CLI command, flow entry point, web app
factory) and pass it in; nothing reads settings at import time.
"""

from __future__ import annotations

import os
from datetime import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

#: Where the TOML file is looked for unless ``LOYALFLOW_CONFIG_FILE`` says otherwise.
DEFAULT_CONFIG_FILE = Path("config/loyalflow.toml")


class SendGridSettings(BaseModel):
    """SendGrid email. With no API key, email goes to the local sandbox."""

    api_key: SecretStr | None = None
    host: str = "https://api.sendgrid.com"
    from_email: str = "rewards@example.com"
    from_name: str = "Rewards"
    sandbox_mode: bool = False
    webhook_public_key: SecretStr | None = None
    messages_per_second: float = 100.0


class TwilioSettings(BaseModel):
    """Twilio SMS. With no auth token, SMS goes to the local sandbox."""

    account_sid: str | None = None
    auth_token: SecretStr | None = None
    messaging_service_sid: str | None = None
    from_number: str | None = None
    base_url: str = "https://api.twilio.com"
    segments_per_second: float = 1.0


class PushSettings(BaseModel):
    """Web Push (VAPID) and Firebase Cloud Messaging."""

    vapid_private_key: SecretStr | None = None
    vapid_subject: str = "mailto:rewards@example.com"
    fcm_service_account_file: Path | None = None
    messages_per_second: float = 50.0


class DispatchSettings(BaseModel):
    """How the dispatcher claims, retries and reconciles outbox messages."""

    claim_size: int = Field(default=500, gt=0, description="Messages claimed per round trip to the database.")
    lease_seconds: int = Field(default=300, gt=0, description="A claim older than this is presumed dead.")
    backoff_base_seconds: float = Field(default=2.0, gt=0)
    backoff_cap_seconds: float = Field(default=600.0, gt=0)
    max_age_hours: float = Field(default=24.0, gt=0, description="Give up retrying a message this long after queueing.")
    reconcile_grace_seconds: float = Field(default=60.0, ge=0,
                                           description="Wait this long before asking a provider about an unknown.")
    request_timeout_seconds: float = Field(default=10.0, gt=0)


class PolicySettings(BaseModel):
    """The gate every message passes just before it is sent."""

    frequency_cap: int = Field(default=3, ge=0, description="Marketing messages per member per window (0: no cap).")
    frequency_window_hours: float = Field(default=168.0, gt=0)
    quiet_hours_start: time = time(21, 0)
    quiet_hours_end: time = time(9, 0)


class WebSettings(BaseModel):
    """The web app serving webhooks, preferences and previews."""

    public_base_url: str = "http://127.0.0.1:8000"
    secret_key: SecretStr = SecretStr("change-me-in-production")
    token_max_age_days: int = 60
    #: HTTP Basic password of the ``/reports`` pages (any user name). Unset: served on a loopback address only.
    reports_password: SecretStr | None = None


class Settings(BaseSettings):
    """Everything loyalflow can be configured with.

    Paths are relative to the working directory unless absolute.
    """

    model_config = SettingsConfigDict(
        env_prefix="LOYALFLOW_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    database_url: str = "sqlite:///var/loyalflow.db"
    config_dir: Path = Path("config")
    templates_dir: Path = Path("templates")
    var_dir: Path = Path("var")
    chunk_size: int = Field(default=5000, gt=0, description="Members per unit of batch work.")
    chunk_workers: int = Field(default=4, gt=0, description="Chunk tasks of one flow run at a time (PostgreSQL; "
                               "SQLite takes one writer at a time, so its chunks run one by one).")
    sendgrid: SendGridSettings = SendGridSettings()
    twilio: TwilioSettings = TwilioSettings()
    push: PushSettings = PushSettings()
    web: WebSettings = WebSettings()
    dispatch: DispatchSettings = DispatchSettings()
    policy: PolicySettings = PolicySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get("LOYALFLOW_CONFIG_FILE", DEFAULT_CONFIG_FILE))
        toml = TomlConfigSettingsSource(settings_cls, toml_file=toml_file)
        return init_settings, env_settings, dotenv_settings, toml, file_secret_settings

    @property
    def sandbox_dir(self) -> Path:
        """Where the sandbox writes what members would have received."""
        return self.var_dir / "sandbox"


def load_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment, ``.env`` and the TOML file."""
    return Settings(**overrides)
