"""Channel adapters built from settings, with the sandbox standing in for any provider without keys.

``open_channels(settings)`` yields one adapter per channel. A provider with credentials gets its
real adapter pointed at the real API; a provider without them gets the same real adapter pointed
at the in-process provider emulator, whose accepted messages the sandbox mailbox writes to
``var/sandbox/`` (``.eml`` files, ``sms.jsonl``, ``push.jsonl``). The code path from outbox to
wire is therefore identical in the sandbox and in production; only the host differs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from channels.base import ChannelAdapter
from channels.email_sendgrid import SendGridAdapter
from channels.emulator import ProviderEmulator
from channels.sandbox import SANDBOX_RATE_PER_SECOND, SandboxMailbox
from channels.sms_twilio import TwilioSmsAdapter
from loyalty.push_delivery import push_adapter
from loyalty.settings import Settings

log = logging.getLogger(__name__)

SANDBOX_SENDGRID_KEY = "SG.sandbox"  # the emulator accepts any bearer key
SANDBOX_FROM_NUMBER = "+15005550006"  # Twilio's magic test number
# Records the sandbox emulator keeps per kind (its mailbox on disk keeps every message).
SANDBOX_RETAIN = 50_000


@dataclass
class OpenChannels:
    """Adapters by channel, and the sandbox behind those that have no provider keys."""

    adapters: dict[str, ChannelAdapter] = field(default_factory=dict)
    sandboxed: set[str] = field(default_factory=set)
    emulator: ProviderEmulator | None = None
    mailbox: SandboxMailbox | None = None


def twilio_status_callback(settings: Settings) -> str:
    """Where Twilio posts delivery statuses (the web app's route)."""
    return f"{settings.web.public_base_url.rstrip('/')}/webhooks/twilio/status"


def _email(settings: Settings, emulator: ProviderEmulator | None) -> ChannelAdapter:
    config, timeout = settings.sendgrid, settings.dispatch.request_timeout_seconds
    if emulator is None:
        # The timeout must reach the client at construction: setting it afterwards changes nothing.
        return SendGridAdapter.from_settings(config, timeout=timeout)
    return SendGridAdapter(SANDBOX_SENDGRID_KEY, host=emulator.url, from_email=config.from_email,
                           from_name=config.from_name, timeout=timeout, rate_per_second=SANDBOX_RATE_PER_SECOND)


def _sms(settings: Settings, emulator: ProviderEmulator | None) -> ChannelAdapter:
    callback = twilio_status_callback(settings)
    if emulator is None:
        return TwilioSmsAdapter.from_settings(settings.twilio, status_callback_url=callback,
                                              timeout=settings.dispatch.request_timeout_seconds)
    return TwilioSmsAdapter(emulator.TWILIO_ACCOUNT_SID, emulator.TWILIO_AUTH_TOKEN, base_url=emulator.url,
                            from_number=settings.twilio.from_number or SANDBOX_FROM_NUMBER,
                            status_callback_url=callback, timeout=settings.dispatch.request_timeout_seconds,
                            rate_per_second=SANDBOX_RATE_PER_SECOND)


def needs_sandbox(settings: Settings) -> set[str]:
    """The channels whose provider has no credentials configured."""
    missing = set()
    if settings.sendgrid.api_key is None:
        missing.add("email")
    if not settings.twilio.account_sid or settings.twilio.auth_token is None:
        missing.add("sms")
    if settings.push.vapid_private_key is None and settings.push.fcm_service_account_file is None:
        missing.add("push")
    return missing


@contextmanager
def open_channels(settings: Settings) -> Iterator[OpenChannels]:
    """Build every channel's adapter; start the sandbox for those without keys; close all on exit."""
    opened = OpenChannels(sandboxed=needs_sandbox(settings))
    if opened.sandboxed:
        opened.emulator = ProviderEmulator(retain=SANDBOX_RETAIN).start()
        opened.mailbox = SandboxMailbox(settings.sandbox_dir)
        opened.emulator.add_listener(opened.mailbox.listen)
        log.info("sandbox for %s: messages are written to %s", ", ".join(sorted(opened.sandboxed)),
                 settings.sandbox_dir)
    try:
        for channel, build in (("email", _email), ("sms", _sms), ("push", push_adapter)):
            emulator = opened.emulator if channel in opened.sandboxed else None
            opened.adapters[channel] = build(settings, emulator)
        yield opened
    finally:
        for adapter in opened.adapters.values():
            adapter.close()
        if opened.emulator is not None:
            opened.emulator.stop()
