"""``relay replay ID... | --webhook ID [--state failed] [--since T] [--until T] [--dry-run]``:
each delivery gets a fresh attempt budget, and goes again as soon as its lane has room
(relay/journal/replays.py, relay/delivery/replays.py).

The deliveries are selected from the journal (read-only, as ``relay deliveries`` reads it: the
file, or the PostgreSQL database), then replayed 500 at a time, with a progress bar on a
terminal: through the running relay's admin listener (``POST /api/replay``) when ``[relay]
admin`` is set and a relay answers there, so that the relay's own journal writes them and its
scheduler takes them at once; else straight into the journal. On SQLite, if a relay runs (it
holds the state directory's lock), the command then asks it to reload, which makes it look for
replays; if none runs, the command holds the lock while it writes, and the next start sends
them. On PostgreSQL the database's notification has every relay on it look for them. A
delivery a running relay holds in memory (queued or being attempted) is not replayed, and the
command says so.
"""

from __future__ import annotations

import contextlib
import getpass
import sys
import time
from collections.abc import Iterator

from relay import config as config_module
from relay.cli.common import (
    CommandError,
    add_config_option,
    admin_request,
    ingest_request,
    journal_name,
    no_journal,
)
from relay.cli.deliveries import when
from relay.journal import lock as state_lock
from relay.journal.history import resolve, select
from relay.journal.replays import write_replays

STATES = ("failed", "delivered", "pending", "all")
BATCH = 500  # deliveries a request (or a transaction) replays
LATER = "the running relay takes them at its next reload"


def add_arguments(parser) -> None:
    add_config_option(parser)
    parser.add_argument(
        "ids", nargs="*", metavar="ID", help="delivery ids (an event's id: each of its deliveries)"
    )
    parser.add_argument("--webhook", help="replay this webhook's deliveries instead")
    parser.add_argument("--state", choices=STATES, help="with --webhook: which (default: failed)")
    parser.add_argument(
        "--since", type=when, metavar="AGO|TIME", help="with --webhook: created since"
    )
    parser.add_argument(
        "--until", type=when, metavar="AGO|TIME", help="with --webhook: created until"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be replayed; change nothing"
    )


def cmd_replay(args) -> int:
    """give deliveries a fresh attempt budget and send them again"""
    if bool(args.ids) == bool(args.webhook):
        raise CommandError("relay replay: give delivery ids, or --webhook ID (not both)")
    if args.ids and (args.state or args.since is not None or args.until is not None):
        raise CommandError("relay replay: --state, --since and --until go with --webhook")
    config = config_module.load_for_admin(args.config)
    state_dir, url = config.relay.state_dir, config.journal.url
    if args.webhook is not None and config.webhook(args.webhook) is None:
        known = ", ".join(w.id for w in config.webhooks) or "none"
        raise CommandError(f"{config.path.name}: no webhook {args.webhook!r} (webhooks: {known})")
    state = args.state or "failed"
    try:
        if args.ids:
            ids = resolve(state_dir, args.ids, url=url)
        else:
            ids = select(
                state_dir,
                webhook_id=args.webhook,
                state=state,
                since=args.since,
                until=args.until,
                url=url,
            )
    except FileNotFoundError as e:
        raise no_journal(config, e) from None
    if not ids:
        print(f"nothing to replay: {args.webhook} has no {state} deliveries", file=sys.stderr)
        return 0
    by = getpass.getuser()
    with _progress(len(ids)) as advance:
        result = _through_the_relay(config, ids, by, args.dry_run, advance)
        how = "through the running relay"
        if result is None:
            result, how = _in_the_file(config, ids, by, args.dry_run, advance)
    replayed, skipped = result
    if args.dry_run:
        for row in replayed:
            print(f"{row['id']}  {row['webhook_id']}  {row['state']}  {row['attempts']} attempts")
        print(f"would replay {_count(replayed)} (dry run: nothing changed)", file=sys.stderr)
    else:
        print(f"replayed {_count(replayed)}, by {by}, {how}")
    for row in skipped:
        print(f"skipped {row['id']}: {row['reason']}", file=sys.stderr)
    return 1 if skipped else 0


def _count(rows: list) -> str:
    return f"{len(rows):,} deliver{'y' if len(rows) == 1 else 'ies'}"


def _through_the_relay(config, ids, by, dry_run, advance) -> tuple[list, list] | None:
    """Replayed through the admin listener; None when no relay answers there."""
    import httpx

    if config.relay.admin is None:
        return None
    replayed, skipped = [], []
    for start in range(0, len(ids), BATCH):
        body = {"ids": ids[start : start + BATCH], "dry_run": dry_run, "by": by}
        try:
            response = admin_request(config, "POST", "/api/replay", json=body)
        except httpx.ConnectError:
            if start == 0:
                return None  # no relay runs
            raise CommandError(_stopped(start, "the relay stopped answering")) from None
        except httpx.HTTPError as e:
            raise CommandError(_stopped(start, f"cannot reach the admin listener: {e}")) from None
        try:
            answer = response.json()
        except ValueError:
            answer = {"error": response.text}
        if response.status_code != 200:
            problems = [f"  {p['field']}: {p['reason']}" for p in answer.get("problems", [])]
            error = f"the relay answered {response.status_code}: {answer.get('error')}"
            raise CommandError(_stopped(start, error), *problems)
        replayed += answer["replayed"]
        skipped += answer["skipped"]
        advance(len(body["ids"]))
    return replayed, skipped


def _stopped(done: int, why: str) -> str:
    return f"relay replay: {why}" + (f" ({done:,} replayed before)" if done else "")


def _in_the_file(config, ids, by, dry_run, advance) -> tuple[tuple[list, list], str]:
    """Replayed straight into the journal file; then a running relay is asked to reload."""
    import httpx

    state_dir = config.relay.state_dir
    if config.journal.url is not None:
        return _in_the_database(config, ids, by, dry_run, advance)
    try:
        with state_lock.hold(state_dir):  # no relay runs: none can start meanwhile
            done, left = _write(state_dir, ids, by, held_ok=True, dry_run=dry_run, advance=advance)
        how = "in the journal: the relay sends them when it starts"
    except state_lock.StateDirLocked:  # a relay runs, without an admin listener that answers
        done, left = _write(state_dir, ids, by, held_ok=False, dry_run=dry_run, advance=advance)
        how = "in the journal; the running relay was asked to reload to take them"
        if not dry_run and done:
            try:
                if config.relay.admin is not None:
                    response = admin_request(config, "POST", "/api/reload")
                else:
                    response = ingest_request(config, "POST", "/reload")
                if response.status_code != 200:
                    how = f"in the journal; {LATER} (its reload was refused)"
            except (httpx.HTTPError, CommandError):
                how = f"in the journal; {LATER} (it could not be asked to reload)"
    replayed = [{"id": i, "webhook_id": w, "state": s, "attempts": a} for i, w, s, a in done]
    skipped = [{"id": i, "reason": reason} for i, reason in left]
    return (replayed, skipped), how


def _in_the_database(config, ids, by, dry_run, advance) -> tuple[tuple[list, list], str]:
    """Replayed straight into the shared PostgreSQL journal: its notification has every relay
    on it look for replays, so none is asked to reload. What a relay holds in memory is
    skipped; with this state directory's relay stopped (its lock taken here), what its runs
    held is replayed too (other relays' stays theirs until their leases expire)."""
    from relay.journal import pg_replays

    def write(held_ok: bool):
        try:
            return pg_replays.write_replays(
                config.journal.url,
                ids,
                time.time(),
                by,
                held_ok=held_ok,
                dry_run=dry_run,
                progress=advance,
                state_dir=config.relay.state_dir,
            )
        except Exception as e:  # noqa: BLE001 - psycopg's, its text scrubbed of the password
            raise CommandError(f"{journal_name(config)}: cannot write the journal: {e}") from None

    try:
        with state_lock.hold(config.relay.state_dir):
            done, left = write(held_ok=True)
    except (state_lock.StateDirLocked, OSError):  # a relay runs there, or it is not ours to lock
        done, left = write(held_ok=False)
    replayed = [{"id": i, "webhook_id": w, "state": s, "attempts": a} for i, w, s, a in done]
    skipped = [{"id": i, "reason": reason} for i, reason in left]
    return (replayed, skipped), "in the journal; every relay on it takes them"


def _write(state_dir, ids, by, *, held_ok, dry_run, advance):
    try:
        return write_replays(
            state_dir, ids, time.time(), by, held_ok=held_ok, dry_run=dry_run, progress=advance
        )
    except Exception as e:  # noqa: BLE001 - sqlite3 or OSError: say which file
        raise CommandError(f"{state_dir}: cannot write the journal: {e}") from None


@contextlib.contextmanager
def _progress(total: int) -> Iterator:
    """A progress bar on stderr when it is a terminal and there are several batches; yields
    the function that moves it on by a number of deliveries."""
    if total <= BATCH or not sys.stderr.isatty():
        yield lambda count: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "replaying",
        BarColumn(),
        MofNCompleteColumn(),
        "deliveries",
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
        redirect_stdout=sys.stdout.isatty(),
        redirect_stderr=False,
    ) as progress:
        task = progress.add_task("replay", total=total)
        yield lambda count: progress.advance(task, count)
