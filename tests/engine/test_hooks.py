"""Optional driver abilities are declared protocols: each driver class declares what it offers, the instrumented
wrapper of the driver pool offers exactly what the driver it wraps offers, and the engine asks with isinstance."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.drivers.base import (
    Batching,
    HealthIsObserved,
    ObservesEnvironment,
    batching,
    health_is_observed,
    observe_environment,
    observing,
)
from reconciler.drivers.kubernetes import KubernetesDriver
from reconciler.drivers.local import LocalDriver
from reconciler.drivers.memory import MemoryDriver
from reconciler.drivers.script import ScriptDriver
from reconciler.engine.hooks import NullMetrics, instrument
from tests.drivers import make_unit


class Calls(NullMetrics):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bool]] = []

    def driver_call(self, driver: str, operation: str, ok: bool, seconds: float) -> None:
        self.seen.append((driver, operation, ok))


@pytest.mark.parametrize(
    ("cls", "abilities"),
    [
        (LocalDriver, {ObservesEnvironment, HealthIsObserved}),
        (KubernetesDriver, {Batching, ObservesEnvironment}),
        (MemoryDriver, {Batching}),
        (ScriptDriver, set()),
    ],
)
def test_every_driver_declares_its_abilities(cls: type, abilities: set[type]) -> None:
    declared = {p for p in (Batching, ObservesEnvironment, HealthIsObserved) if p in cls.__mro__}
    assert declared == abilities
    # what is declared is what the class has (a declaration without the method would be a lie)
    assert all(issubclass(cls, p) for p in declared - {HealthIsObserved})


def test_the_wrapper_of_a_local_driver_observes_environments_and_reports_the_call(tmp_path: Path) -> None:
    inner = LocalDriver("t1", tmp_path / "t1")
    inner.apply(make_unit({"web": {"a.yaml": b"a: 1\n"}}))
    calls = Calls()
    driver = instrument(inner, calls)
    assert isinstance(driver, ObservesEnvironment)
    assert not isinstance(driver, Batching)
    assert health_is_observed(driver)
    found = observe_environment(driver, "recette", ["other"], check_drift=True)
    assert sorted(found) == ["other", "shop"]
    assert found["other"] is None and found["shop"] is not None and found["shop"].version == "1.0.0"
    assert calls.seen == [("local", "observe", True)]  # one batched call, not a list plus one observe each


def test_the_wrapper_of_a_memory_driver_batches_and_falls_back_to_observe_each() -> None:
    inner = MemoryDriver("t1")
    inner.apply(make_unit({"web": {"a.yaml": b"a: 1\n"}}))
    calls = Calls()
    driver = instrument(inner, calls)
    assert isinstance(driver, Batching)
    assert not isinstance(driver, ObservesEnvironment)
    assert not health_is_observed(driver)
    with driver.batch("recette"):
        found = observe_environment(driver, "recette", [], check_drift=False)
    assert list(found) == ["shop"]
    assert [c for c in inner.calls if c[0] == "batch"] == [("batch", "recette", "begin"), ("batch", "recette", "end")]
    assert [op for _, op, _ in calls.seen] == ["list", "observe"]


def test_the_wrapper_of_a_driver_with_both_abilities_offers_both() -> None:
    class Both(MemoryDriver, ObservesEnvironment):
        def observe_environment(
            self, environment: str, applications: list[str], check_drift: bool
        ) -> dict[str, object]:
            return dict.fromkeys(applications)

    driver = instrument(Both("t1"), Calls())
    assert isinstance(driver, Batching) and isinstance(driver, ObservesEnvironment)
    assert driver.observe_environment("recette", ["a"], True) == {"a": None}
    with driver.batch("recette"):
        pass


def test_abilities_are_kept_per_class_but_observe_is_health_is_read_per_driver() -> None:
    class Plain:
        kind, target = "plain", "t1"

    class Observed(Plain):
        observe_is_health = True

    wrapped = [instrument(Observed(), Calls()), instrument(Plain(), Calls()), instrument(Observed(), Calls())]  # type: ignore[arg-type]
    assert {type(w) for w in wrapped} == {type(wrapped[0])}  # one wrapper class, asked once
    assert [health_is_observed(w) for w in wrapped] == [True, False, True]
    assert [batching(w) for w in wrapped] == [None, None, None]
    assert [observing(w) for w in wrapped] == [None, None, None]
