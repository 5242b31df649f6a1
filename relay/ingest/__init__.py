"""Where events come in: the ingest API (``api``, the same on TCP and the Unix socket) and the
parsing and routing of events (``events``). An event is acknowledged only once the journal has
it. Exports nothing itself: import the module you need.
"""
