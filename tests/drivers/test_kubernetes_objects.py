"""Reading manifests for the kubernetes driver: the fast reader of plain YAML gives exactly what the hardened reader
gives, and leaves everything else (and every error) to it. Pure: no API server."""

from __future__ import annotations

import pytest

from bench.k8s_throughput import configmap_fleet, dev_fleet
from reconciler.core.problems import PermanentError
from reconciler.drivers.k8s_objects import _hardened_documents, _plain_documents, parse_documents_of

CASES = [
    b"",
    b"---\n",
    b"---\n---\napiVersion: v1\n",
    b"a: 1\n---\n---\nb: 2\n...\n",
    b"# comment\n---\nkind: x\n",
    b"- a\n- b\n",
    b"just a scalar\n",
    b"a: [1, 2.5, .inf, 0x1F, 0o17, 1_000, yes, No, null, ~, 2001-12-14, '12', \"t\", 1.10, 012, 1:20]\n",
    b"a:\n  b: {c: d, e: [f]}\n  80: x\n  true: y\n  null: z\n",
    b"a: |\n  multi\n  line\nb: >-\n  folded\n  text\n",
    b"\n\n\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
]
# each of these needs the hardened reader (to refuse it, or because it may hold an anchor, alias, tag or merge key)
UNUSUAL = [
    b"a: 1\na: 2\n",
    b"? [a]\n: b\n",
    b"a: b: c\n",
    b"a: 'unterminated\n",
    b"a: =\n",
    b"a: &x 1\nb: *x\n",
    b"a: !!python/object:os.system x\n",
    b"a: {<<: {b: 1}}\n",
    b"a: '*/5 * * * *'\n",
    b"\xef\xbb\xbfa: 1\n",
    b"a: \xff\n",
    b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
]


def outcome(read: object) -> object:
    try:
        return read()  # type: ignore[operator]
    except PermanentError as exc:
        return f"error: {exc}"


@pytest.mark.parametrize("data", CASES)
def test_the_fast_reader_reads_plain_yaml_as_the_hardened_one(data: bytes) -> None:
    fast = _plain_documents(data)
    assert fast is not None, "plain YAML: the fast reader reads it"
    assert fast == _hardened_documents("p.yaml", data)


@pytest.mark.parametrize("data", UNUSUAL)
def test_anything_unusual_is_left_to_the_hardened_reader(data: bytes) -> None:
    assert _plain_documents(data) is None


def test_rendered_units_read_the_same_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    units = [u for us in dev_fleet(3, "t").units.values() for u in us] + [
        u for us in configmap_fleet(1, 5, "t").units.values() for u in us
    ]
    files = {f"{u.application}/{path}": data for u in units for path, data in u.files().items()}
    assert len(files) > 20
    fast_ones = [path for path, data in files.items() if _plain_documents(data) is not None]
    assert len(fast_ones) > len(files) // 2
    for path, data in files.items():
        fast = _plain_documents(data)
        assert fast is None or fast == _hardened_documents(path, data), path
    both = outcome(lambda: parse_documents_of(files))
    monkeypatch.setattr("reconciler.drivers.k8s_objects._plain_documents", lambda data: None)
    assert outcome(lambda: parse_documents_of(files)) == both


@pytest.mark.parametrize(
    "files",
    [
        {"c/a.yaml": b"- just\n- a list\n"},
        {
            "c/a.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\nkind: ConfigMap\nmetadata: {name: x}\n"
        },
        {"c/a.yaml": b"---\n---\napiVersion: v1\nkind: X\nmetadata: {labels: []}\n"},
        {"c/a.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n", "c/b.yaml": b"a: 1\na: 2\n"},
    ],
)
def test_errors_are_the_hardened_readers(files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    fast = outcome(lambda: parse_documents_of(files))
    monkeypatch.setattr("reconciler.drivers.k8s_objects._plain_documents", lambda data: None)
    assert isinstance(fast, str) and fast.startswith("error: c/") and fast == outcome(lambda: parse_documents_of(files))
