"""The outbox and the webhook sink against real HTTP receivers: the receiver verifies the HMAC and the CloudEvents
envelope; 5xx and 429 (with Retry-After) are retried, other 4xx given up; a hanging receiver never blocks the
producer; a full queue drops and counts."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from reconciler.notify.outbox import Outbox
from reconciler.notify.webhook import SIGNATURE_HEADER, WebhookSink, signature

SECRET = b"webhook-secret-0123456789"


class Receiver:
    """A real HTTP server answering with scripted statuses; it checks each request as a subscriber would."""

    def __init__(self, statuses: list[tuple[int, dict[str, str]]]) -> None:
        self.statuses = statuses
        self.received: list[dict[str, Any]] = []
        self.times: list[float] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.headers["Content-Type"] == "application/cloudevents+json"
                assert self.headers[SIGNATURE_HEADER] == signature(SECRET, body), "bad signature"
                event = json.loads(body)
                assert event["specversion"] == "1.0" and event["source"] == "reconciler"
                assert {"id", "type", "time", "datacontenttype", "data"} <= set(event)
                receiver.received.append(event)
                receiver.times.append(time.monotonic())
                status, headers = receiver.statuses.pop(0) if receiver.statuses else (204, {})
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def outbox() -> Iterator[Outbox]:
    box = Outbox(capacity=10, attempts=3, backoff=0.05, max_backoff=0.1)
    yield box
    box.close()


def _receiver(statuses: list[tuple[int, dict[str, str]]]) -> Iterator[Receiver]:
    receiver = Receiver(statuses)
    yield receiver
    receiver.server.shutdown()


PAYLOAD = {"kind": "environment.degraded", "stage": "production", "text": "production: 1 environment Degraded"}


def test_a_delivered_event_is_signed_and_enveloped(outbox: Outbox) -> None:
    for receiver in _receiver([]):
        outbox.offer(WebhookSink("ops", receiver.url, SECRET), PAYLOAD)
        assert outbox.drain(10)
        assert [e["data"] for e in receiver.received] == [PAYLOAD]
        assert receiver.received[0]["type"] == "io.reconciler.environment.degraded"
        assert outbox.results[("ops", "sent")] == 1


def test_5xx_and_429_are_retried_honouring_retry_after_and_4xx_is_given_up(outbox: Outbox) -> None:
    for receiver in _receiver([(503, {}), (429, {"Retry-After": "0.5"}), (204, {})]):
        outbox.offer(WebhookSink("ops", receiver.url, SECRET), PAYLOAD)
        assert outbox.drain(10)
        assert len(receiver.received) == 3 and outbox.results[("ops", "sent")] == 1
        assert receiver.times[2] - receiver.times[1] >= 0.45  # the receiver's Retry-After
    for receiver in _receiver([(401, {})]):
        outbox.offer(WebhookSink("ops", receiver.url, SECRET), PAYLOAD)
        assert outbox.drain(10)
        assert len(receiver.received) == 1 and outbox.dead_letters == 1 and outbox.results[("ops", "failed")] == 1


def test_a_hanging_receiver_never_blocks_the_producer_and_a_full_queue_drops(caplog: pytest.LogCaptureFixture) -> None:
    box = Outbox(capacity=2, attempts=1)
    with socket.socket() as hanging:  # accepts connections (backlog), never answers
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(16)
        url = f"http://127.0.0.1:{hanging.getsockname()[1]}/hook?token=do-not-log-me"
        sink = WebhookSink("pager", url, SECRET, timeout=0.5)
        started = time.monotonic()
        offered = [box.offer(sink, PAYLOAD) for _ in range(5)]
        assert time.monotonic() - started < 0.1  # offer never waits on delivery
        assert offered.count(False) >= 2 and box.dropped == offered.count(False)
        assert box.drain(10)
    box.close()
    assert box.results[("pager", "failed")] == offered.count(True)
    assert "timed out" in caplog.text and "do-not-log-me" not in caplog.text and SECRET.decode() not in caplog.text


def test_a_slack_style_sink_posts_the_text_and_its_url_is_never_shown() -> None:
    from reconciler.notify.slack import SlackSink

    got: list[bytes] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200 if len(got) > 1 else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/XXXXsecretXXXX"
    box = Outbox(attempts=3, backoff=0.05)
    box.offer(SlackSink("chat", url), PAYLOAD)
    assert box.drain(10)
    box.close()
    server.shutdown()
    assert [json.loads(b) for b in got] == [{"text": PAYLOAD["text"]}] * 2
    assert box.results[("chat", "sent")] == 1 and box.results[("chat", "retried")] == 1


def test_the_outboxes_counts_are_exported_as_metrics() -> None:
    from reconciler.observability.metrics import PrometheusMetrics

    metrics = PrometheusMetrics()
    metrics.notifications({("ops", "sent"): 3, ("ops", "failed"): 1}, {"ops": 2})
    text = metrics.render().decode()
    assert 'reconciler_notifications_total{sink="ops",result="sent"} 3.0' in text
    assert 'reconciler_notification_queue_depth{sink="ops"} 2.0' in text
