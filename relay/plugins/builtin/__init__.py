"""relay's own behaviour, as ordinary plugins: the plain and compose renderers, the
``Signature`` signer, the ``http`` transport and the ``exponential`` retry policy.

Each uses only what a third-party plugin may use (relay.plugins' exports and relay.model), so
that anything built in can be replaced by a plugin. Exports nothing; relay.plugins registers
each module by name.
"""
