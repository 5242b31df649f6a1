"""relay: a durable webhook relay for WhatsApp Business API events."""

__version__ = "0.1.0"
