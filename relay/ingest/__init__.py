"""Where events come in: the ingest API (``api``, the same on TCP and the Unix socket), the
parsing and routing of events (``events``), requests for delivery reports (``reports``), what
ingest took and refused (``stats``, for /metrics), and who may send over TCP (``trust``: the
token, the Host). An event is acknowledged only once the journal has it. Exports nothing
itself: import the module you need.
"""
