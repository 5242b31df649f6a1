"""What a run reports: the figures (each system's, with its ratio to direct and the target)
and the delivery totals as the JSON has them, and the text tables printed after a run, the
figures and the CPU per event split by process."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .cpu import BENCH_PARTS

if TYPE_CHECKING:
    from .run import Bench


def build_report(bench: Bench, info: dict) -> dict:
    """The report of a finished run: ``info`` about the machine and the receiver, the figures,
    each system's results, the totals sent and delivered, and the notes."""
    r = bench.results
    rows = []

    def row(
        label,
        key,
        field,
        *,
        unit,
        lower_is_better=False,
        ref=("e2e_http", "events_per_s"),
        target="",
    ):
        values = {name: _get(r[name], key, field) for name in r}
        reference = _get(r["direct"], *ref)  # direct always runs
        ratios = {
            name: (v / reference if v is not None and reference else None)
            for name, v in values.items()
        }
        rows.append(
            {
                "figure": label,
                "key": f"{key}.{field}" if key else field,
                "unit": unit,
                "lower_is_better": lower_is_better,
                "reference": "direct " + ".".join(ref),
                "target": target,
                **{name: values[name] for name in r},
                **{f"{name}_x_direct": ratios[name] for name in r},
            }
        )

    row(
        "end to end, HTTP batches of 100",
        "e2e_http",
        "events_per_s",
        unit="events/s",
        target=">= 1.0x direct, >= 10x naive",
    )
    row("end to end, Unix socket batches of 100", "e2e_uds", "events_per_s", unit="events/s")
    row(
        "durable ingest, batches of 100, 4 clients",
        "ingest_batch",
        "events_per_s",
        unit="events/s",
        target=">= 50,000/s",
    )
    row(
        "durable ingest, single events, 16 clients",
        "ingest_single",
        "acks_per_s",
        unit="acks/s",
        target=">= 8,000/s",
    )
    row(
        "durable ingest alone (nothing to deliver), batches of 100",
        "ingest_batch_alone",
        "events_per_s",
        unit="events/s",
    )
    row(
        "durable ingest alone (nothing to deliver), single events",
        "ingest_single_alone",
        "acks_per_s",
        unit="acks/s",
    )
    for pace in bench.args.rates:
        key = f"latency_{pace:g}"
        target = {1000: "p99 <= 3 ms", 3000: "p99 <= 5 ms"}.get(int(pace), "")
        for field in ("p50_ms", "p99_ms"):
            row(
                f"added latency at {pace:,.0f}/s paced, {field[:3]}",
                key,
                field,
                unit="ms",
                lower_is_better=True,
                ref=(key, field),
                target=target if field == "p99_ms" else "",
            )
    row("peak RSS", None, "rss_peak_mb", unit="MB", lower_is_better=True, ref=("rss_peak_mb",))
    row(
        "CPU per 1,000 events (end to end)",
        "e2e_http",
        "cpu_s_per_1000",
        unit="CPU s",
        lower_is_better=True,
        ref=("e2e_http", "cpu_s_per_1000"),
    )

    sent = delivered = 0
    all_delivered = True
    for figures in r.values():
        for value in figures.values():
            if isinstance(value, dict) and "sent" in value:
                sent += value["sent"]
                delivered += min(value["delivered"], value["sent"])
                all_delivered &= bool(value["all_delivered"])
    return {
        "info": info,
        "figures": rows,
        "systems": r,
        "relay_x_naive": _ratio(r, "naive", "e2e_http", "events_per_s"),
        "relay_x_celery": {
            "e2e_http": _ratio(r, "celery", "e2e_http", "events_per_s"),
            "ingest_single": _ratio(r, "celery", "ingest_single", "acks_per_s"),
            # celery's CPU per event / relay's: relay spends 1/x of it
            "cpu_per_event": _ratio(r, "celery", "e2e_http", "cpu_s_per_1000", inverse=True),
        },
        "sent": sent,
        "delivered": delivered,
        "all_delivered": all_delivered,
        "notes": bench.notes,
        "elapsed_s": time.monotonic() - bench.started,
    }


def _ratio(r: dict, other: str, *path, inverse: bool = False) -> float | None:
    """relay's figure / ``other``'s (or the inverse), when both were measured."""
    mine, theirs = _get(r.get("relay", {}), *path), _get(r.get(other, {}), *path)
    if not mine or not theirs:
        return None
    return theirs / mine if inverse else mine / theirs


def _get(figures: dict, *path):
    value = figures
    for key in path:
        if key is None:
            continue
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value if isinstance(value, (int, float)) else None


# -- the table -------------------------------------------------------------------------------


def format_table(report: dict) -> str:
    info = report["info"]
    ceiling = info["receiver_ceiling"]
    lines = [
        f"relay bench: {info['receiver']} receiver "
        f"(ceiling {ceiling['requests_per_s']:,.0f} req/s, "
        f"{ceiling['tool']}), {info['event_bytes']}-byte status events, Python {info['python']}, "
        f"{info['cpus']} CPUs{', --quick' if info['quick'] else ''}",
        "",
    ]
    names = [name for name in ("direct", "naive", "relay", "celery") if name in report["systems"]]
    header = ("figure", *names, "target")
    table = [header]
    for row in report["figures"]:
        cells = [f"{row['figure']} ({row['unit']})"]
        for name in names:
            value = row.get(name)
            if value is None:
                cells.append("-")
                continue
            text = (
                f"{value:,.0f}"
                if value >= 100
                else f"{value:.3g}"
                if value < 10
                else f"{value:.1f}"
            )
            ratio = row.get(f"{name}_x_direct")
            if name != "direct" and ratio is not None:
                text += f" ({ratio:.2f}x)"
            cells.append(text)
        cells.append(row["target"])
        table.append(tuple(cells))
    lines += aligned(table, left=(0, len(names) + 1))
    lines.append("")
    if report["relay_x_naive"]:
        lines.append(f"relay / naive end to end: {report['relay_x_naive']:.1f}x")
    celery = report["relay_x_celery"]
    if celery["e2e_http"]:
        text = f"relay / celery: end to end {celery['e2e_http']:.1f}x"
        if celery["ingest_single"]:
            text += f", single-event acks {celery['ingest_single']:.1f}x"
        if celery["cpu_per_event"]:
            text += f", CPU per event 1/{celery['cpu_per_event']:.1f} of celery's"
        lines.append(text + " (the same run)")
    lines.append(
        f"events sent {report['sent']:,}, delivered {report['delivered']:,}"
        f"{'' if report['all_delivered'] else '  (NOT ALL DELIVERED)'}; "
        f"{report['elapsed_s']:.0f} s; ratios are to direct in the same run"
    )
    runs = report["systems"]["direct"].get("e2e_http", {}).get("runs_events_per_s")
    if runs:
        text = ", ".join(f"{r:,.0f}" for r in runs)
        lines.append(f"direct end to end: the faster of a run first and a run last ({text}/s)")
    lines += format_cpu_split(report)
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def format_cpu_split(report: dict) -> list[str]:
    """CPU µs per event, process by process, for each phase that measured it."""
    rows = []
    for name in ("relay", "celery", "naive"):
        for phase, result in report["systems"].get(name, {}).items():
            if isinstance(result, dict) and "cpu_us_per_event" in result:
                rows.append((f"{name} {phase}", result["cpu_us_per_event"]))
    if not rows:
        return []
    parts = [part for _, split in rows for part in split if part not in BENCH_PARTS]
    parts = [*dict.fromkeys(parts), *BENCH_PARTS]
    cpus = report["info"]["cpus"]
    header = ("CPU per event (µs)", *parts, "total", f"{cpus} CPUs busy at")
    table = [header]
    for label, split in rows:
        total = sum(split.values())
        cells = [f"{split[p]:.0f}" if p in split else "-" for p in parts]
        table.append((label, *cells, f"{total:.0f}", f"{cpus * 1e6 / max(total, 1e-9):,.0f}/s"))
    return ["", *aligned(table, left=(0,))]


def aligned(table: list[tuple[str, ...]], left: tuple[int, ...]) -> list[str]:
    """The rows as lines of columns, the ``left`` ones flush left and the rest right, with a rule
    under the first row (the header)."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = []
    for i, row in enumerate(table):
        lines.append(
            "  ".join(
                cell.ljust(w) if j in left else cell.rjust(w)
                for j, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines
