"""The e-mail sink against a real SMTP server (aiosmtpd) in the test: STARTTLS before login, the server's
certificate checked; a server without STARTTLS or with an untrusted certificate gets nothing; 4xx retried, 5xx and
a failed login given up; the password in no message or error."""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.engine.notifications import build_notifier
from reconciler.notify.mail import MailSink, SmtpServer
from reconciler.notify.outbox import Outbox
from tests.notify.smtp_server import PASSWORD, USER, EphemeralController, Mailbox, certificates, smtp_server

PAYLOAD = {
    "kind": "environment.degraded",
    "subject": "production: 3 environments Degraded",
    "text": "production: 3 environments Degraded (lille-production, rennes-production, shared-production): "
    "espace-assure 2.3.1; web: 0/2 ready at 0123456789ab by dev@example.org",
    "environments": ["lille-production", "rennes-production", "shared-production"],
    "link": "https://rc.example/stages",
}


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path, Path]:
    return certificates(tmp_path)


@pytest.fixture
def outbox() -> Iterator[Outbox]:
    box = Outbox(capacity=10, attempts=3, backoff=0.05, max_backoff=0.1)
    yield box
    box.close()


def running(mailbox: Mailbox, certs: tuple[Path, Path, Path] | None) -> Iterator[EphemeralController]:
    controller = smtp_server(mailbox, certs)
    yield controller
    controller.stop()


def sink(port: int, ca: Path | None, password: str = PASSWORD, starttls: bool = True) -> MailSink:
    server = SmtpServer("127.0.0.1", port, starttls, USER, password, str(ca) if ca else None, timeout=5)
    return MailSink("ops-mail", server, "reconciler@bank.example", ("ops@bank.example", "oncall@bank.example"))


def test_a_message_is_sent_over_starttls_after_login(certs: tuple[Path, Path, Path], outbox: Outbox) -> None:
    mailbox = Mailbox()
    for server in running(mailbox, certs):
        outbox.offer(sink(server.port, certs[0]), PAYLOAD)
        assert outbox.drain(15)
        assert outbox.results[("ops-mail", "sent")] == 1
        (mail,) = mailbox.mails
        assert mail["tls"] and mail["authenticated"]
        assert mail["to"] == ["ops@bank.example", "oncall@bank.example"]
        parsed = email.message_from_string(mail["content"], policy=email.policy.default)
        assert parsed["Subject"] == "[reconciler] production: 3 environments Degraded"
        assert parsed["From"] == "reconciler@bank.example"
        body = parsed.get_body().get_content()  # type: ignore[union-attr]
        assert PAYLOAD["text"] in body and "https://rc.example/stages" in body and "  rennes-production" in body
        assert PASSWORD not in mail["content"]


def test_a_server_without_starttls_gets_nothing(outbox: Outbox, certs: tuple[Path, Path, Path]) -> None:
    mailbox = Mailbox()
    for server in running(mailbox, None):
        outbox.offer(sink(server.port, certs[0]), PAYLOAD)
        assert outbox.drain(15)
        assert mailbox.mails == [] and outbox.results[("ops-mail", "failed")] == 1 and outbox.dead_letters == 1


def test_an_untrusted_certificate_gets_nothing(outbox: Outbox, certs: tuple[Path, Path, Path]) -> None:
    mailbox = Mailbox()
    for server in running(mailbox, certs):
        outbox.offer(sink(server.port, None), PAYLOAD)  # the system's CAs do not know the test CA
        assert outbox.drain(15)
        assert mailbox.mails == [] and outbox.results[("ops-mail", "failed")] == 1


def test_a_plain_relay_is_used_only_when_the_operator_said_so(outbox: Outbox) -> None:
    mailbox = Mailbox()
    for server in running(mailbox, None):
        relay = MailSink("relay", SmtpServer("127.0.0.1", server.port, starttls=False, timeout=5),
                         "reconciler@bank.example", ("ops@bank.example",))  # fmt: skip
        outbox.offer(relay, PAYLOAD)
        assert outbox.drain(15)
        assert [m["tls"] for m in mailbox.mails] == [False]


def test_a_temporary_refusal_is_retried_and_a_permanent_one_is_not(
    outbox: Outbox, certs: tuple[Path, Path, Path]
) -> None:
    mailbox = Mailbox(replies=["451 4.3.0 try again later", "250 OK", "554 5.7.1 rejected"])
    for server in running(mailbox, certs):
        outbox.offer(sink(server.port, certs[0]), PAYLOAD)
        outbox.offer(sink(server.port, certs[0]), PAYLOAD)
        assert outbox.drain(15)
        assert mailbox.attempts == 3 and len(mailbox.mails) == 1
        assert (outbox.results[("ops-mail", "retried")], outbox.results[("ops-mail", "failed")]) == (1, 1)


def test_a_failed_login_is_given_up_without_showing_the_password(
    outbox: Outbox, certs: tuple[Path, Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    mailbox = Mailbox()
    for server in running(mailbox, certs):
        outbox.offer(sink(server.port, certs[0], password="wrong-password-42"), PAYLOAD)
        assert outbox.drain(15)
        assert mailbox.mails == [] and outbox.results[("ops-mail", "failed")] == 1
        assert "SMTP 535" in caplog.text and "wrong-password-42" not in caplog.text


def test_the_config_makes_an_email_sink_with_its_ca_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "smtp.password").write_text(PASSWORD)

    class NoFleet:
        def members(self) -> dict[str, str]:
            return {}

        def notify_of(self) -> dict[str, tuple[str, ...]]:
            return {}

        def head(self) -> tuple[str, str]:
            return "", ""

    section = {"sinks": {"mail": {"type": "email", "host": "smtp.bank.example", "from": "rc@bank.example",
                                  "to": ["ops@bank.example"], "username": USER,
                                  "password": f"file:{tmp_path / 'smtp.password'}", "ca": "certs/ca.pem"}},
               "subscriptions": [{"sink": "mail"}]}  # fmt: skip
    notifier = build_notifier(section, NoFleet(), str(tmp_path))
    assert notifier is not None
    mail = notifier.sinks["mail"]
    assert isinstance(mail, MailSink)
    assert mail.server == SmtpServer("smtp.bank.example", 587, True, USER, PASSWORD, f"{tmp_path}/certs/ca.pem")
    notifier.close(0)
