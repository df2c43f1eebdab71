"""Hardened YAML parsing: accepted shapes keep their values and lines; refused ones say why and where."""

from __future__ import annotations

import pytest

from reconciler.core.yamlsafe import YamlError, parse_documents, scalar_text

# what YAML 1.1 read as booleans, sexagesimals or (broken) numbers: text under the YAML 1.2 core schema
YAML11_AS_TEXT: dict[str, object] = {
    **{"a": "no", "b": "on", "c": "Off", "d": "y", "e": "YES", "f": "1_000", "g": "1:20", "h": "0b_"},
    **{"i": ["-0x_"], "j": "=", "k": "<<"},
}

ACCEPTED = [
    ("plain", b"a: 1\nb: x\n", [{"a": 1, "b": "x"}]),
    ("version-text", b"v: 1.10\n", [{"v": 1.1}]),
    ("bools-and-null", b"a: true\nb: ~\nc: 'yes'\n", [{"a": True, "b": None, "c": "yes"}]),
    ("timestamp-stays-text", b"t: 2026-01-05T08:00:00+01:00\n", [{"t": "2026-01-05T08:00:00+01:00"}]),
    ("multi-doc", b"a: 1\n---\nb: 2\n", [{"a": 1}, {"b": 2}]),
    ("empty-doc", b"# only a comment\n", []),
    ("crlf", b"a: 1\r\nb:\r\n  - x\r\n", [{"a": 1, "b": ["x"]}]),
    ("bom", b"\xef\xbb\xbfa: 1\n", [{"a": 1}]),
    ("numeric-key-is-text", b"1: one\n", [{"1": "one"}]),
    # YAML 1.2 core schema: what YAML 1.1 read as booleans, octals, sexagesimals or odd numbers is the text written
    (
        "yaml11-scalars-are-text",
        b"a: no\nb: on\nc: Off\nd: y\ne: YES\nf: 1_000\ng: 1:20\nh: 0b_\ni: [-0x_]\nj: =\nk: <<\n",
        [YAML11_AS_TEXT],
    ),
    (
        "core-numbers",
        b"a: 010\nb: 0o17\nc: 0x1F\nd: 1e3\ne: -.inf\nf: TRUE\ng: Null\n",
        [{"a": 10, "b": 15, "c": 31, "d": 1000.0, "e": float("-inf"), "f": True, "g": None}],
    ),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_accepted(data: bytes, expected: list[object]) -> None:
    assert [d.data for d in parse_documents("f.yaml", data)] == expected


REFUSED = [
    ("duplicate-key", b"a: 1\nb: 2\na: 3\n", 3, "duplicate key 'a' (first at line 1)"),
    ("nested-duplicate", b"a:\n  x: 1\n  x: 2\n", 3, "duplicate key 'x'"),
    ("anchor", b"a: &x 1\n", 1, "anchor '&x' is not allowed"),
    ("alias", b"a: *x\n", 1, "alias '*x' is not allowed"),
    ("merge", b"b:\n  <<: {c: 1}\n", 2, "merge keys"),
    ("python-tag", b"a: !!python/name:os.system\n", 1, "'!!python/name:os.system' is not allowed"),
    ("binary-tag", b"a: !!binary aGVsbG8=\n", 1, "'!!binary' is not allowed"),
    ("set-tag", b"a: !!set {x: null}\n", 1, "'!!set' is not allowed"),
    ("local-tag", b"a: !env HOME\n", 1, "'!env' is not allowed"),
    ("complex-key", b"? {a: 1}\n: x\n", 1, "keys must be plain scalars"),
    ("bad-utf8", b"a: ok\nb: \xc3\x28\n", 2, "not valid UTF-8"),
    ("syntax", b"a: [1, 2\nb: 3\n", 2, "invalid YAML"),
    ("tab-indent", b"a:\n\t- x\n", 2, "invalid YAML"),
    ("overlong-number", b"a: 1\nb: " + b"9" * 1001 + b"\n", 2, "number of 1001 characters is over the limit of 1000"),
    ("yaml11-bool-tagged", b"a: !!bool yes\n", 1, "'yes' is not a valid !!bool (YAML 1.2: only true/false, null)"),
    ("int-tag-on-text", b"a: !!int 1_000\n", 1, "'1_000' is not a valid !!int"),
]


@pytest.mark.parametrize(("data", "line", "fragment"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused(data: bytes, line: int, fragment: str) -> None:
    with pytest.raises(YamlError) as info:
        parse_documents("f.yaml", data)
    assert info.value.line == line
    assert fragment in info.value.message


def test_size_limit() -> None:
    with pytest.raises(YamlError, match="over the limit of 10 bytes"):
        parse_documents("f.yaml", b"a: 12345678901\n", max_size=10)


def test_lines_of_keys_and_items() -> None:
    (doc,) = parse_documents("f.yaml", b"spec:\n  list:\n    - a\n    - b\n  key: v\n")
    assert doc.lines[("spec", "list", 1)] == 4
    assert doc.line(("spec", "key")) == 5
    assert doc.line(("spec", "missing", 3)) == 1  # nearest known ancestor


@pytest.mark.parametrize(
    ("text", "expected"),
    [(b"v: 1.10", "1.10"), (b"v: 010", "010"), (b"v: 2.4.0", "2.4.0"), (b"v: 1e3", "1e3"), (b"v: true", "true")],
)
def test_scalar_text_is_exact(text: bytes, expected: str) -> None:
    (doc,) = parse_documents("f.yaml", text)
    assert scalar_text(doc.data["v"]) == expected


def test_deep_nesting_is_bounded_not_a_crash() -> None:
    (doc,) = parse_documents("f.yaml", b"a: " + b"[" * 500 + b"]" * 500 + b"\n")
    depth, value = 0, doc.data["a"]
    while value:
        value, depth = value[0], depth + 1
    assert depth == 499
    with pytest.raises(YamlError, match="maximum nesting depth"):
        parse_documents("f.yaml", b"a: " + b"[" * 50000 + b"]" * 50000 + b"\n")
