"""The web app: provider webhooks, one-click unsubscribe, the preference page."""
