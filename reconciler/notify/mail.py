"""An e-mail sink: each message as a short plain-text mail over SMTP, with STARTTLS.

The connection is upgraded with STARTTLS before anything else is said (the server's certificate checked against
the system's CAs or the operator's ``ca`` file, its name against the host); a server that does not offer STARTTLS
is refused rather than spoken to in the clear, unless the operator wrote ``starttls: false`` (a relay on
localhost). Login only when a user is configured, the password by reference. Answers: a 4xx reply, a dropped
connection, a timeout or no connection are retried; a 5xx reply (a refused recipient, failed authentication) is
given up. Errors name the sink and the SMTP code, never the password. Used by
:class:`reconciler.notify.outbox.Outbox`.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from reconciler.notify.outbox import DeliveryError


@dataclass(frozen=True)
class SmtpServer:
    host: str
    port: int = 587
    starttls: bool = True
    username: str = ""
    password: str = ""
    ca_file: str | None = None  # PEM bundle of the CAs to trust instead of the system's
    timeout: float = 10.0


class MailSink:
    def __init__(self, name: str, server: SmtpServer, sender: str, recipients: tuple[str, ...]) -> None:
        self.name = name
        self.server = server
        self.sender = sender
        self.recipients = recipients

    def message(self, payload: dict[str, Any]) -> EmailMessage:
        mail = EmailMessage()
        mail["Subject"] = f"[reconciler] {payload.get('subject') or payload.get('text', '')}"[:200]
        mail["From"] = self.sender
        mail["To"] = ", ".join(self.recipients)
        mail["Date"] = formatdate(usegmt=True)
        mail["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or None)
        lines = [str(payload.get("text", ""))]
        envs = payload.get("environments") or []
        if isinstance(envs, list) and len(envs) > 1:
            lines += ["", "Environments:", *(f"  {e}" for e in envs[:50])]
            lines += [f"  and {len(envs) - 50} more"] if len(envs) > 50 else []
        if payload.get("link"):
            lines += ["", str(payload["link"])]
        mail.set_content("\n".join(lines) + "\n")
        return mail

    def send(self, payload: dict[str, Any]) -> None:
        who = f"mail {self.name}"
        s = self.server
        try:
            with smtplib.SMTP(s.host, s.port, timeout=s.timeout) as smtp:
                smtp.ehlo()
                if s.starttls:
                    if not smtp.has_extn("starttls"):
                        raise DeliveryError(f"{who}: the server does not offer STARTTLS; nothing sent", False)
                    smtp.starttls(context=ssl.create_default_context(cafile=s.ca_file))
                    smtp.ehlo()
                if s.username:
                    smtp.login(s.username, s.password)
                smtp.send_message(self.message(payload), self.sender, list(self.recipients))
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            raise DeliveryError(f"{who}: recipients refused (SMTP {codes})", all(c < 500 for c in codes)) from exc
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(f"{who}: SMTP {exc.smtp_code}", exc.smtp_code < 500) from exc
        except ssl.SSLError as exc:
            raise DeliveryError(f"{who}: TLS failed ({exc.reason or 'handshake'}); nothing sent", False) from exc
        except (smtplib.SMTPException, OSError) as exc:
            text = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            raise DeliveryError(f"{who}: no answer ({text})", True) from exc
