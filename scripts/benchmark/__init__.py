"""relay's benchmark: one command, loopback only, starts everything itself (issue 5).

    scripts/bench [--quick] [--json PATH] [--events N] [--receiver auto|nginx|python]
                  [--systems naive,relay,celery] [--phases ...] [--relay-setting LINE] [--scrape]
    scripts/bench --compare REV [--pairs N] [the same options]

Four systems deliver the seed's status event to a local receiver:

- direct: a minimal trio + h11 client with 64 keep-alive connections posts straight to the
  receiver (no relay, no journal): what a user gets by posting the webhooks themselves.
- naive:  scripts/naive_relay.py, fsync per event and one shared httpx.AsyncClient.
- relay:  ``relay run`` with a generated config and a real journal in a temporary directory.
- celery: what a Python team deploys instead (issue 18): a Starlette endpoint on uvicorn that
  enqueues each event into Redis (``appendfsync always``) and answers 202, and a Celery 5
  worker (gevent pool of 64, ``acks_late``) that signs and posts it; redis-server from Debian's
  package and the Python side in .bench-venv/, both installed by the bench (peer_setup.py).
  Not in --quick's default; when it cannot be had, the run says why and goes on without it.

``--compare REV`` runs the current tree and commit REV alternately, ABBA, ``--pairs`` pairs,
and gives each figure's median ratio with a distribution-free interval and a verdict: "faster",
"slower" or "no change beyond noise" (compare.py, stats.py).

The receiver is nginx (``return 204``, from Debian's package) when installed, else a Python
receiver in a subprocess; its own ceiling is measured (wrk when installed). Latency always uses the
Python receiver, which notes when it answers each event. The paced and the ingest phases send
from a sender process, which notes when each request was due and answered: CLOCK_MONOTONIC is
shared by processes, so their timestamps compare directly. Receiver and sender are plain epoll
loops that frame requests by hand (Content-Length only: every sender here sends one), as they
share the two CPUs with the systems they measure: with h11 the receiver took 0.6 of the two
cores at 3,000 requests/s; as trio code the receiver and the sender still took ~200 µs of CPU an
event at 3,000/s and ~370 at 1,000/s, as epoll loops ~60 and ~120.

After the figures, a second table splits each phase's CPU by process (the relay's three, the
load generator, the receiver) in µs per event, with the rate at which that much CPU per event
would keep every CPU busy: a phase whose rate is near it is bound by the machine, not by a wait.
The JSON also has how often each process blocked per event (``waits_per_event``: wake-ups).

Every phase is bounded in events and in time, and every process started here runs in its own
process group that is killed when the bench exits (and gets SIGKILL if the bench dies).
Internal roles (``--role receiver``, ``sender``, ``direct``) run the subprocesses.

The package, by role: cli.py (the options, ``main``), run.py (the order of a run), phases.py
(each phase), systems.py (relay, naive, direct), peer.py and peer_setup.py (the Celery peer,
and installing it; celery_peer/ is its code, run in .bench-venv), load.py (the raw client, the
sender), receivers.py, cpu.py (/proc: CPU, wake-ups, RSS, steal), report.py (the JSON, the
tables), processes.py (process groups), events.py (what is sent), scrape.py (``--scrape``: the
relay's /metrics every second during its phases), compare.py (``--compare``: the runs, the
checks, the table) and stats.py (its verdicts). scripts/bench runs ``cli.main``.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository
