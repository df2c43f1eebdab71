"""Every HTTP test logs structlog JSON into its own buffer (``http_logs``), never into a stream another test closed."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import structlog

from reconciler.observability import logging as logs


@pytest.fixture(autouse=True)
def http_logs() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    logs.configure(stream=buffer, level="debug", json=True)
    yield buffer
    structlog.reset_defaults()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test shows what the server logged."""
    outcome = yield
    report = outcome.get_result()
    buffer = item.funcargs.get("http_logs") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and isinstance(buffer, io.StringIO):
        report.sections.append(("server log", buffer.getvalue()[-20000:]))
