"""relay: a durable webhook relay for WhatsApp Business API events, run as a sidecar.

The pipeline is the tree: ``ingest`` (events come in) -> ``journal`` (they wait, on disk) ->
``delivery`` (they go out), over ``http``; ``compose`` and ``config`` read what relay.toml asks
for; ``plugins`` holds the hooks and the built-in plugins; ``cli`` the commands. The README's
Layout section says which may import which. Exports ``__version__``.
"""

__version__ = "0.1.0"
