"""Where events go out: the retry scheduler (``dispatch``), a lane per webhook (``lanes``, paced by
``rate``), one attempt through the hooks (``attempt``), the delivery process (``process``) and
the relay's side of it (``remote``), what attempts amounted to (``stats``, for /metrics), what
the journal keeps of each attempt's request and answer (``capture``, read back by ``records``),
and replayed deliveries fed to their lanes (``replays``). Delivery reads and writes the journal;
it never touches ingest. Exports nothing itself: import the module you need.
"""
