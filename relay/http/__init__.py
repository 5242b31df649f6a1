"""HTTP/1.1 on trio, and the only place that knows the wire.

``http11`` frames messages on a stream (RFC 9112), ``server`` serves a handler on TCP and Unix
listeners (opened by ``listeners``), ``admission`` judges a TCP request's head (its Host, a
bearer token) before its body is read, ``client`` sends requests on pooled keep-alive
connections, and ``messages`` holds the ``Request`` and ``Response`` values both use. Nothing
here imports the rest of relay. Exports nothing itself: import the module you need.
"""
