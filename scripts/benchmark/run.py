"""The order of a run: the receivers and their ceiling, the direct baseline first (and again
last: the faster run is the reference), then the relay, the Celery peer and the naive relay,
each started, taken through its phases and stopped, and the steal time over the run; then the
report."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys

import trio

from .cpu import STEAL_WARNING, machine_ticks, system_peak_rss_mb
from .peer import CeleryPeer
from .phases import INGEST_PHASES, Phases
from .processes import BENCH
from .receivers import NginxReceiver, Receiver, measure_ceiling, wait_count
from .report import build_report
from .scrape import scraping
from .systems import NaiveRelay, RealRelay, System

SYSTEMS = ("relay", "celery", "naive")  # in the order they run; direct runs first and last


class Bench(Phases):
    """One run of the bench: ``run`` returns the report (report.py)."""

    async def run(self) -> dict:
        a = self.args
        procs = self.procs
        self.results: dict[str, dict] = {"direct": {}}
        lat = Receiver(procs, "receiver")
        await lat.start()
        nginx = shutil.which("nginx") or (
            "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None
        )
        if a.receiver == "nginx" and not nginx:
            raise SystemExit("bench: --receiver nginx, but nginx is not installed")
        if nginx and a.receiver != "python":
            sink = NginxReceiver(procs, nginx)
            await sink.start()
        else:
            sink = lat
        self.log(f"receiver: {sink.kind} on 127.0.0.1:{sink.port}; latency receiver: python")
        sink_url = f"http://127.0.0.1:{sink.port}/hook"
        lat_url = f"http://127.0.0.1:{lat.port}/hook"
        ceiling = await measure_ceiling(sink, a.ceiling_seconds, procs.tmp)
        self.log(
            f"receiver ceiling: {ceiling['requests_per_s']:,.0f} requests/s ({ceiling['tool']})"
        )
        ticks_before = machine_ticks()
        info = {
            "receiver": sink.kind,
            "receiver_ceiling": ceiling,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "event_bytes": len(self.event_body),
            "quick": a.quick,
        }

        # direct: measured first and again last; the faster run is the reference, as this
        # machine's noise only ever slows a run down.
        self.results["direct"] = {"e2e_http": await self.direct(sink, "first")}
        rate = self._e2e_rate_of("direct")
        if rate > 0.5 * ceiling["requests_per_s"]:
            self.notes.append(
                f"direct reached {rate / ceiling['requests_per_s']:.0%} of the receiver's ceiling:"
                " the receiver may limit the figures (install nginx)"
            )
        for pace in a.rates:
            if f"latency_{pace:g}" not in a.phases:
                continue
            result = await self.paced(pace, lat.port, "/hook", lat)
            self.results["direct"][f"latency_{pace:g}"] = result
            self.log(f"direct paced {pace:g}/s: {_latency_text(result)}")

        if "relay" in a.systems:
            info["relay"] = RealRelay(a.relay_setting, tree=a.relay_tree).identify()
        if "celery" in a.systems and a.peer_missing:
            self.notes.append(f"celery: not run: {a.peer_missing}")
        # The relay first: a slow peer must not use up the time the relay needs (--quick).
        for name in SYSTEMS:
            if name not in a.systems or (name == "celery" and a.peer is None):
                continue
            if self.time_left() < 10:
                self.notes.append(f"{name}: skipped, out of time")
                continue
            system = self.system(name)
            try:
                await system.start(procs, sink_url, lat_url)
            except RuntimeError as e:
                if name != "celery":
                    raise
                # The peer is someone else's software: one that does not start is a note.
                self.notes.append(f"celery: did not start: {e}")
                if getattr(system, "proc", None):
                    procs.stop(system.proc)
                continue
            self.results[system.name] = {}
            try:
                if getattr(system, "admin", None):
                    await self.measure_scraped(system, sink, lat)
                else:
                    await self.measure_system(system, sink, lat)
            finally:
                self.results[system.name]["rss_peak_mb"] = system_peak_rss_mb(system.pid)
                procs.stop(system.proc, grace=5.0)
        if self.time_left() > a.warmup + a.window + 5:
            again = await self.direct(sink, "last")
            runs = [self.results["direct"]["e2e_http"], again]
            best = max(runs, key=lambda r: r["events_per_s"])
            best["runs_events_per_s"] = [r["events_per_s"] for r in runs]
            best["sent"] = sum(r["sent"] for r in runs)
            best["delivered"] = sum(r["delivered"] for r in runs)
            best["all_delivered"] = all(r["all_delivered"] for r in runs)
            self.results["direct"]["e2e_http"] = best
        self.results["direct"]["rss_peak_mb"] = max(self._direct_rss)
        # On a shared virtual machine the host may take CPU from this one: then every figure
        # is slower, and not comparable with another run's.
        (total0, steal0), (total1, steal1) = ticks_before, machine_ticks()
        info["steal"] = steal = (steal1 - steal0) / max(total1 - total0, 1)
        if steal > STEAL_WARNING:
            self.notes.append(
                f"the host took {steal:.0%} of this machine's CPU during the run (steal time):"
                " its figures are not comparable with an undisturbed run's"
            )
        return build_report(self, info)

    def system(self, name: str) -> System:
        a = self.args
        if name == "relay":
            return RealRelay(a.relay_setting, scrape=a.scrape, tree=a.relay_tree)
        return CeleryPeer(a.peer) if name == "celery" else NaiveRelay()

    async def direct(self, sink, which: str) -> dict:
        """The direct baseline's saturation run, in its own process (its CPU and RSS alone)."""
        a = self.args
        argv = [sys.executable, str(BENCH), "--role", "direct", "--port", str(sink.port)]
        argv += ["--events", str(a.events), "--seconds", str(a.window + a.warmup)]
        base = sink.count()
        proc, out, _ = self.procs.start(f"direct-{which}", argv)
        with trio.move_on_after(a.window + a.warmup + 30):
            while proc.poll() is None:
                await trio.sleep(0.05)
        self.procs.stop(proc)
        direct = json.loads(out.read_text().strip().splitlines()[-1])
        reached, _ = await wait_count(sink.count, base + direct["ok"], a.drain_timeout)
        self._direct_rss = [*getattr(self, "_direct_rss", []), direct["rss_peak_mb"]]
        rate = direct["ok"] / direct["elapsed"]
        self.log(f"direct ({which}): {rate:,.0f} events/s")
        return {
            "sent": direct["sent"],
            "delivered": sink.count() - base,
            "all_delivered": reached and direct["ok"] == direct["sent"],
            "events_per_s": rate,
            "cpu_s_per_1000": direct["cpu"] / max(direct["ok"], 1) * 1000,
        }

    async def measure_scraped(self, system: RealRelay, sink, lat: Receiver) -> None:
        """``measure_system`` with /metrics scraped every second meanwhile (--scrape)."""
        async with scraping(system.admin) as scraper:
            await self.measure_system(system, sink, lat)
        self.results[system.name]["scrape"] = s = scraper.summary()
        self.notes.append(
            f"{system.name}: /metrics scraped every {s['interval_s']:g} s during its phases:"
            f" {s['scrapes']} scrapes ({s['failed']} failed), p50 {s['p50_ms'] or 0:.1f} ms,"
            f" max {s['max_ms'] or 0:.1f} ms, {s['bytes']:,} bytes"
        )

    async def measure_system(self, system: System, sink, lat: Receiver) -> dict:
        a = self.args
        results = self.results[system.name]
        results["pid"] = system.pid
        for key, via in (("e2e_http", system.tcp), ("e2e_uds", system.uds)):
            if key not in a.phases:
                continue
            await self.settle(system)
            async with self.py_spy(system, key, a.warmup + a.window):
                results[key] = result = await self.saturate(system, via, sink)
            self.log(f"{system.name} {key}: {result['events_per_s']:,.0f} events/s")
        # Without an end-to-end figure (--phases), assume the targets' rate to size phases.
        rate = self._e2e_rate(system) or 8000.0
        budget = rate * a.ingest_drain
        for key, batch, clients in INGEST_PHASES:
            alone = key.endswith("_alone")
            if key not in a.phases or (alone and system.name != "relay"):
                continue  # the naive relay sends every event somewhere
            limit = max(batch, min(a.events, int(budget)))
            await self.settle(system)
            async with self.py_spy(system, key, a.ingest_window):
                results[key] = r = await self.ingest(
                    system, sink, batch=batch, clients=clients, limit=limit, alone=alone
                )
            rates = f"{r['events_per_s']:,.0f} events/s, {r['acks_per_s']:,.0f} acks/s"
            self.log(f"{system.name} {key}: {rates}")
        for pace in a.rates:
            key = f"latency_{pace:g}"
            if key not in a.phases:
                continue
            if rate < 0.5 * pace:  # it would take too long to drain
                results[key] = {"skipped": f"saturated: end to end {self._e2e_rate(system):,.0f}/s"}
                continue
            await self.settle(system)
            async with self.py_spy(system, key, a.paced_seconds):
                results[key] = r = await self.paced(pace, system.tcp[1], "/events", lat, system)
            if rate < pace:
                r["saturated"] = True
                self.notes.append(
                    f"{system.name}: {pace:,.0f}/s paced is beyond its end-to-end rate "
                    f"({self._e2e_rate(system):,.0f}/s): its latency there is queueing"
                )
            self.log(f"{system.name} paced {pace:g}/s: {_latency_text(r)}")
        return results


def _latency_text(result: dict) -> str:
    if result["p99_ms"] is None:
        return "no latency samples"
    return (
        f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms"
        f" (answered: p50 {result['answer_p50_ms']:.2f}, p99 {result['answer_p99_ms']:.2f})"
    )
