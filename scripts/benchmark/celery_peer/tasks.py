"""The Celery peer's task: what a Python team writes instead of relay, a Celery 5 task that signs
the event (hex HMAC-SHA256 in ``Signature``, as relay) and posts it with requests, retried with
relay's backoff shape. Runs in .bench-venv (scripts/benchmark/celery_peer/requirements.txt), in
the worker (``celery -A tasks worker -P gevent -c 64``, started by serve.py) and imported by the
web app to enqueue. No relay code: it must not lean on what it is compared with.

Durability as a careful team sets it: ``acks_late`` (a task is acknowledged after it ran, so a
worker killed mid-delivery leaves it in Redis), ``task_acks_on_failure_or_timeout`` (a task that
failed every try is acknowledged, not redelivered forever), and Redis with ``appendfsync always``
(serve.py), so the enqueue that the 202 waits for is on disk."""

import hashlib
import hmac
import os
from pathlib import Path

import requests
from celery import Celery
from celery.signals import worker_ready
from requests.adapters import HTTPAdapter

app = Celery("relay_bench_peer", broker=os.environ["BENCH_BROKER"])
app.conf.update(
    task_acks_late=True,
    task_acks_on_failure_or_timeout=True,
    task_ignore_result=True,  # fire and forget: no result backend
    task_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

SECRET = os.environ.get("BENCH_SECRET", "bench-secret").encode()
TRIES = 3  # the bench's relay.toml: tries = 3, backoff first 0.5 s, factor 2, at most 5 s
FIRST, FACTOR, LONGEST = 0.5, 2.0, 5.0
TIMEOUT = 10.0

_session: requests.Session | None = None


def session() -> requests.Session:
    """One keep-alive pool for the worker's 64 greenlets (requests' default keeps 10)."""
    global _session
    if _session is None:
        _session = requests.Session()
        _session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=64))
    return _session


@app.task(bind=True, name="deliver", max_retries=TRIES - 1)
def deliver(self, url: str, body: str) -> None:
    data = body.encode()
    signature = hmac.new(SECRET, data, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/json", "Signature": signature}
    try:
        answer = session().post(url, data=data, headers=headers, timeout=TIMEOUT)
        failure = None if 200 <= answer.status_code < 300 else f"HTTP {answer.status_code}"
    except requests.RequestException as e:
        failure = f"{type(e).__name__}: {e}"
    if failure is not None:
        countdown = min(FIRST * FACTOR**self.request.retries, LONGEST)
        raise self.retry(countdown=countdown, exc=RuntimeError(failure))


@worker_ready.connect
def _ready(**_) -> None:
    """Tell serve.py the worker consumes: it answers no event before that."""
    ready = os.environ.get("BENCH_WORKER_READY")
    if ready:
        Path(ready).touch()
