"""Reading manifests for the kubernetes driver (:mod:`reconciler.drivers.k8s_yaml`): the template reader and the
fast reader of plain YAML give exactly what the hardened reader gives, and leave everything else (and every error)
to it. Pure: no API server."""

from __future__ import annotations

import random
from typing import Any

import pytest

from bench.k8s_throughput import configmap_fleet, dev_fleet
from reconciler.core.desired import Filled, fill_template, rendered
from reconciler.core.problems import PermanentError
from reconciler.drivers.k8s_yaml import _filled_documents, _hardened_documents, _plain_documents, parse_documents_of

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
    b"a: =\nb: [yes, off, y, 0b_, 1_0]\n",  # YAML 1.2 core schema: text, read by the fast reader as by the hardened
    b"a: |\n  multi\n  line\nb: >-\n  folded\n  text\n",
    b"\n\n\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
]
# each of these needs the hardened reader (to refuse it, or because it may hold an anchor, alias, tag or merge key)
UNUSUAL = [
    b"a: 1\na: 2\n",
    b"? [a]\n: b\n",
    b"a: b: c\n",
    b"a: 'unterminated\n",
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
    filled = {f"{u.application}/{path}": f for u in units for path, f in u.filled().items()}
    templated = [path for path, f in filled.items() if _filled_documents(f, files[path]) is not None]
    assert len(templated) > len(files) // 2, "most rendered files are read from their template's parse"
    for path in templated:
        assert _filled_documents(filled[path], files[path]) == _plain_documents(files[path]), path
    assert outcome(lambda: parse_documents_of(files, filled)) == outcome(lambda: parse_documents_of(files))
    for path, data in files.items():
        fast = _plain_documents(data)
        assert fast is None or fast == _hardened_documents(path, data), path
    both = outcome(lambda: parse_documents_of(files))
    monkeypatch.setattr("reconciler.drivers.k8s_yaml._plain_documents", lambda data: None)
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
    monkeypatch.setattr("reconciler.drivers.k8s_yaml._plain_documents", lambda data: None)
    assert isinstance(fast, str) and fast.startswith("error: c/") and fast == outcome(lambda: parse_documents_of(files))


# -- the template reader -----------------------------------------------------------------------------------------
def filled_file(template: str, **values: Any) -> tuple[dict[str, bytes], dict[str, Filled]]:
    filled = fill_template("c/t.yaml", template.encode(), values)
    return {"c/t.yaml": rendered(filled)}, {"c/t.yaml": filled}


OBJ = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: m}\n"
# (template, the slot's value, read from the template's parse?): either way, the same documents or the same error
TEMPLATES = [
    (OBJ + 'data:\n  a: "x.${x}.y"\n  b: "${x}"\n', "cm001-ab", True),
    (OBJ + 'data:\n  a: "${x}"\n', "with spaces and: #colons", True),
    (OBJ + 'data:\n  a: "${x}"\n', "", True),
    (OBJ + "data:\n  a: '${x}'\n", "it's", False),  # a quote in a quoted scalar
    (OBJ + 'data:\n  a: "${x}"\n', 'say "hi"', False),
    (OBJ + 'data:\n  a: "${x}"\n', "back\\slash", False),
    (OBJ + 'data:\n  a: "${x}"\n', "a & b", False),  # a byte that may start an anchor: the hardened reader's
    (OBJ + 'data:\n  a: "${x}"\n', "caf\u00e9", False),
    (OBJ + 'data:\n  a: "${x}"\n', "two\nlines", False),
    (OBJ + 'data:\n  a: "\\${x}"\n', "nope", False),  # an escape eats the marker: the template does not parse
    (OBJ + "spec:\n  replicas: ${x}\n", 3, True),  # a plain scalar is resolved again: an int
    (OBJ + "spec:\n  on: ${x}\n", "yes", True),
    (OBJ + "spec:\n  t: ${x}\n", "1:20", True),  # sexagesimal: 80
    (OBJ + "spec:\n  t: ${x}\n", "0x1F", True),
    (OBJ + "spec:\n  t: ${x}\n", "2001-12-14", True),
    (OBJ + "spec:\n  t: v${x}\n", "1.5", True),
    (OBJ + "spec:\n  image: ${x}\n", "registry.example.org/app:1.2.3", True),
    (OBJ + "spec:\n  image: ${x}\n", "a: b", False),
    (OBJ + "spec:\n  image: ${x}\n", "ends:", False),
    (OBJ + "spec:\n  image: ${x}\n", "#comment", False),
    (OBJ + "spec:\n  image: ${x}\n", "", False),  # nothing: a null
    (OBJ + "spec:\n  image: ${x} tail\n", "", False),
    (OBJ + "spec:\n  image: ${x}\n", "-dash", False),
    (OBJ + "spec: {image: ${x}}\n", "host:80", False),  # ':' in a flow collection
    (OBJ + "spec: {image: ${x}}\n", "host.80", True),
    (OBJ + "spec: [${x}, b]\n", "a,c", False),
    (OBJ + 'spec:\n  a: "one\n    ${x} two"\n', "a b", False),  # several lines: no spaces
    (OBJ + 'spec:\n  a: "one\n    ${x} two"\n', "word", True),
    (OBJ + "spec:\n  a: |\n    ${x}\n    more\n", "http://h:1/p", True),
    (OBJ + "spec:\n  a: |\n    more\n    ${x}\n", "", False),  # a last empty line is chomped
    (OBJ + "spec:\n  a: >\n    ${x}\n    more\n", " lead", False),
    (OBJ + "spec:\n  ${x}: 1\n", "key", False),  # a key
    (OBJ + "spec:\n  a: 1  # ${x}\n", "c", False),  # a comment
    (OBJ + "spec:\n${x}\n", "  a: 1", False),  # a whole line
    (OBJ + "spec:\n  a: zqRECONCILERslot00000zq${x}\n", "b", False),  # the marker itself
    (OBJ + 'data:\n  a: "\\x7aqRECONCILERslot00000zq"\n  b: c # ${x}\n', "v", False),  # a marker spelled by escapes
    (OBJ + 'data:\n  a: "zqRECONCILER\\\n    slot00000zq"\n  b: c # ${x}\n', "v", False),  # ... by a folded line
    (OBJ + "data:\n  a: ${x}\n", "9" * 1001, False),  # a number over 1,000 characters: the hardened reader's error
    (OBJ + "data:\n  a: ${x}\n", "no", True),  # YAML 1.2 core schema: the text no, either way
    (OBJ + "data: {a: b}\n", None, True),  # no slot: parsed once
    (OBJ + "data:\n  a: ${x}\n---\n" + OBJ.replace("name: m", "name: n") + "data:\n  b: ${x}\n", "v", True),
    (OBJ + "data:\n  a: ${x}\n  a: 2\n", "v", False),  # a duplicate key: the hardened reader refuses it
    ("kind: ${x}\n", "X", True),  # not an object: the same error either way
]


@pytest.mark.parametrize(("template", "value", "templated"), TEMPLATES)
def test_a_template_reads_like_its_rendering(template: str, value: Any, templated: bool) -> None:
    files, filled = filled_file(template, x=value)
    used = _filled_documents(filled["c/t.yaml"], files["c/t.yaml"]) is not None
    assert used == templated
    assert outcome(lambda: parse_documents_of(files, filled)) == outcome(lambda: parse_documents_of(files))


def test_each_reading_is_a_fresh_copy() -> None:
    """The driver adds its labels and namespace to what it reads: the next reading of the template is unchanged."""
    files, filled = filled_file(OBJ + "data:\n  a: ${x}\n  l: [1, {b: c}]\n", x="v")
    first = parse_documents_of(files, filled)[0].body
    first["metadata"]["labels"] = {"mine": "yes"}
    first["data"]["l"][1]["b"] = "changed"
    again = parse_documents_of(files, filled)[0].body
    assert again == {**first, "metadata": {"name": "m"}, "data": {"a": "v", "l": [1, {"b": "c"}]}}


# the pieces of random templates: a slot in every kind of place, and texts with every kind of character
PLACES = [
    "a: ${x}", "a: p${x}", "a: ${x}s", 'a: "${x}"', "a: '${x}'", 'a: "p ${x} s"', "a: {b: ${x}}", "a: [${x}, c]",
    "a: |\n    ${x}\n    tail", "a: >-\n    head\n    ${x}", 'a: "one\n    ${x} two"', "${x}: k", "a: 1 # ${x}",
    "a: &n ${x}", "a: - ${x}", "a: ${x}:", "? ${x}\n  : v", "a:\n    - ${x}\n    - b",
]  # fmt: skip
CHARACTERS = "aZ09 .:/-_#,[]{}\"'&*!<>|%@`?=+~\\\t\n\u00e9"


@pytest.mark.parametrize("seed", range(8))
def test_random_templates_read_like_their_renderings(seed: int) -> None:
    """A differential test: any template with any texts reads the same from its template (or is left to the other
    readers) as its rendering does: the same documents, or the same error."""
    rng = random.Random(seed)
    used = 0
    for _ in range(150):
        lines = [f"  k{i}{rng.choice(PLACES)[1:]}".replace("${x}", f"${{x{i}}}") for i in range(rng.randint(1, 3))]
        template = OBJ + "data:\n" + "\n".join(lines) + "\n"
        values = {f"x{i}": "".join(rng.choice(CHARACTERS) for _ in range(rng.randint(0, 4))) for i in range(3)}
        if rng.random() < 0.5:  # mostly harmless texts too, so that the template reader is used
            values = {k: rng.choice(["v1", "a.b-c", "80", "true", "x y", "h:1"]) for k in values}
        files, filled = filled_file(template, **values)
        used += _filled_documents(filled["c/t.yaml"], files["c/t.yaml"]) is not None
        both = [outcome(lambda f=files, r=recipes: parse_documents_of(f, r)) for recipes in (filled, None)]
        assert both[0] == both[1], (template, values)
    assert used > 20
