"""A cold cycle of the 235-environment example fleet with every notification sink configured, beside the same cycle
without any (issue 19).

``python -m bench.notify_cycles [--runs N] [--out FILE]``: the committed example fleet in a real Git repository,
local targets. Each run measures two cold cycles (a new controller, empty targets, no status branch), in
alternating order: one without a ``notifications`` section, one with a CloudEvents webhook, a chat webhook and an
e-mail sink over SMTP with STARTTLS (aiosmtpd, a test CA), every event subscribed, and GitHub commit statuses
for every stage (a local forge that checks each request against GitHub's description). The cycle is
``Controller.cycle`` (status commit included), each in a fresh process so that nothing carries over from an
earlier cycle; delivery happens on the outboxes' threads, and the messages are counted once the controller has
closed (it gives them up to 5 s). Reported: the median cycles, their ratio and the median ratio of each run's pair
(the target is within 5 %), the messages each sink received and the commit statuses posted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from bench.fleet import BenchFleet
from reconciler.commands.common import load_config
from reconciler.commands.run import build_controller
from reconciler.core.plan import Phase
from tests.notify.forge_server import ForgeServer
from tests.notify.smtp_server import PASSWORD, USER, Mailbox, certificates, smtp_server

TOKEN = "bench-forge-token"


class Counter:
    """An HTTP receiver that answers 204 and counts what it got."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        counter = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                counter.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def notifications(root: Path, hook: Counter, chat: Counter, smtp_port: int, ca: Path, forge: str) -> dict[str, Any]:
    (root / "hook.secret").write_text("bench-hook-secret")
    (root / "chat.url").write_text(chat.url)
    (root / "smtp.password").write_text(PASSWORD)
    (root / "forge.token").write_text(TOKEN)
    return {
        "dashboardURL": "https://reconciler.bench.example",
        "sinks": {
            "hook": {"type": "webhook", "url": hook.url, "secret": f"file:{root / 'hook.secret'}"},
            "chat": {"type": "slack", "url": f"file:{root / 'chat.url'}"},
            "mail": {"type": "email", "host": "127.0.0.1", "port": smtp_port, "username": USER,
                     "password": f"file:{root / 'smtp.password'}", "from": "reconciler@bench.example",
                     "to": ["ops@bench.example"], "ca": str(ca)},
        },
        "subscriptions": [{"sink": "hook"}, {"sink": "chat"}, {"sink": "mail"}],
        "commitStatuses": {"forge": "github", "url": forge, "repository": "bench/releases",
                           "token": f"file:{root / 'forge.token'}"},
    }  # fmt: skip


def cold_cycle(fleet: BenchFleet, name: str, section: dict[str, Any] | None, concurrency: int) -> tuple[float, float]:
    """One cold cycle in a fresh process (nothing carried over from an earlier controller): its seconds, and the
    seconds of it spent in the notifier (events, routing, coalescing, offering, commit statuses)."""
    fleet.reset_targets_and_status()
    state = fleet.root / f"state-{name}"
    shutil.rmtree(state, ignore_errors=True)
    path = fleet.write_config(name, concurrency, "0s", state)
    if section is not None:
        config = yaml.safe_load(path.read_text())
        config["notifications"] = section
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    os.sync()  # the last cycle's files written back and the deleted targets gone: each cycle starts from the same disk
    done = subprocess.run([sys.executable, "-m", "bench.notify_cycles", "--child", str(path)], capture_output=True,
                          timeout=1200, check=False, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"cold cycle {name}: {done.stderr.decode(errors='replace')[-2000:]}")
    found: dict[str, float] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return found["seconds"], found["notifier_seconds"]


def child(config: Path) -> int:
    """The child's cold cycle: measured around ``Controller.cycle``; the notifier's grace at close is not."""
    controller = build_controller(load_config(str(config)))
    controller.restore()
    spent = [0.0]
    notifier = controller.notifier
    if notifier is not None:  # timed where the controller calls it, after the status commit

        def timed(report: Any) -> None:
            begun = time.perf_counter()
            notifier(report)
            spent[0] += time.perf_counter() - begun

        controller.listeners = [timed if listener is notifier else listener for listener in controller.listeners]
    started = time.perf_counter()
    report = controller.cycle("manual")
    seconds = time.perf_counter() - started
    bad = [o.environment for o in report.outcomes.values() if o.phase is not Phase.SYNCED]
    controller.close()  # (the notifier's grace: delivery finishes here, outside the measured cycle)
    if report.source_error or report.invalid or bad or len(report.outcomes) != 235:
        print(f"cold cycle: {report.source_error or report.invalid or bad[:5]}", file=sys.stderr)
        return 1
    print(json.dumps({"seconds": seconds, "notifier_seconds": spent[0]}))
    return 0


def measure(runs: int, concurrency: int, root: Path) -> dict[str, Any]:
    fleet = BenchFleet(root, 35, 60)
    hook, chat, mailbox = Counter(), Counter(), Mailbox()
    certs = certificates(root)
    smtp = smtp_server(mailbox, certs)
    forge = ForgeServer("github", TOKEN)
    section = notifications(root, hook, chat, smtp.port, certs[0], forge.url)
    without: list[float] = []
    with_sinks: list[float] = []
    notifier: list[float] = []
    counts: list[dict[str, int]] = []
    try:
        for run in range(runs):
            order = [False, True] if run % 2 == 0 else [True, False]
            for sinks in order:
                before = (len(hook.bodies), len(chat.bodies), len(mailbox.mails), len(forge.requests))
                seconds, spent = cold_cycle(fleet, f"{'sinks' if sinks else 'plain'}{run}", section if sinks else None,
                                            concurrency)  # fmt: skip
                (with_sinks if sinks else without).append(seconds)
                notifier.extend([spent] if sinks else [])
                if sinks:
                    after = (len(hook.bodies), len(chat.bodies), len(mailbox.mails), len(forge.requests))
                    sent = [b - a for a, b in zip(before, after, strict=True)]
                    counts.append(dict(zip(("webhook", "chat", "email", "commit_statuses"), sent, strict=True)))
    finally:
        smtp.stop()
        forge.close()
        hook.server.shutdown()
        chat.server.shutdown()
    plain, sinks_s = statistics.median(without), statistics.median(with_sinks)
    return {
        "environments": 235,
        "cold_cycle_without_sinks_seconds": round(plain, 2),
        "cold_cycle_with_every_sink_seconds": round(sinks_s, 2),
        "ratio": round(sinks_s / plain, 3),
        "target_ratio": 1.05,
        "messages_per_cycle": counts[0],
        "messages_every_run": counts,
        "forge_requests_checked_against_description": not forge.violations,
        "notifier_seconds_in_cycle": round(statistics.median(notifier), 4),
        "notifier_share_of_cycle": round(statistics.median(notifier) / sinks_s, 5),
        "ratio_of_pairs": round(statistics.median(b / a for a, b in zip(without, with_sinks, strict=True)), 3),
        "seconds_each_run": {"without": [round(s, 2) for s in without], "with": [round(s, 2) for s in with_sinks]},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)  # one cold cycle, this config
    args = p.parse_args()
    if args.child:
        return child(args.child)
    with tempfile.TemporaryDirectory(prefix="bench-notify-") as tmp:
        result = {"concurrency": args.concurrency, "runs": args.runs, **measure(args.runs, args.concurrency, Path(tmp))}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
