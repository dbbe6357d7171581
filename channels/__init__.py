"""Delivery adapters for SendGrid email, Twilio SMS and push, and the provider emulator.
They know providers and nothing of campaigns (filled in by the channels issue)."""
