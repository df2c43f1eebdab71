"""Rendering of component templates: compiled once, substituted per environment, errors naming file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.core.desired import RenderError, compile_template, render_template, template_values
from reconciler.core.loader import load_repo
from reconciler.core.substitute import lookup_in, substitute_string
from reconciler.core.yamlsafe import YamlFloat, scalar_text
from reconciler.source.fstree import DirectoryTree

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "releases-repo"
VALUES: dict[str, Any] = {
    "env": {"name": "lille-dev", "stage": "dev", "labels": {"region": "nord"}},
    "params": {"replicas": 3, "ratio": YamlFloat(1.1, "1.10"), "debug": True, "empty": None},
    "app": {"name": "shop", "owner": "team-a"},
    "release": {"version": "1.10", "name": "shop-1.10"},
    "component": {"name": "web", "image": "registry/shop:1.10", "digest": "", "artifact": "", "checksum": ""},
}

CASES = [
    ("plain", "kind: Service\n", "kind: Service\n"),
    ("one key", "name: ${app.name}\n", "name: shop\n"),
    ("two keys on a line", "image: ${component.image}@${env.name}\n", "image: registry/shop:1.10@lille-dev\n"),
    ("number keeps its text", "ratio: ${params.ratio}\n", "ratio: 1.10\n"),
    ("boolean", "debug: ${params.debug}\n", "debug: true\n"),
    ("escape", "literal: $${app.name}\n", "literal: ${app.name}\n"),
    ("dollar without brace", "cost: $5 ${params.replicas}\n", "cost: $5 3\n"),
    ("whole last line typed", "a: 1\n${params.replicas}", "a: 1\n3"),
    ("whole last line null", "a: 1\n${params.empty}", "a: 1\n"),
    ("CRLF kept", "a: ${app.name}\r\nb: 2\r\n", "a: shop\r\nb: 2\r\n"),
    ("BOM dropped", "\ufeffa: ${app.name}\n", "a: shop\n"),
    ("hyphen and digits in keys", "r: ${env.labels.region}\n", "r: nord\n"),
    ("no newline at end", "x: ${app.owner}", "x: team-a"),
    ("percent and braces kept", "f: '%s %d %%'\nm: {a: '${app.name}%'}\n", "f: '%s %d %%'\nm: {a: 'shop%'}\n"),
    ("percent without a slot", "f: 100%\n", "f: 100%\n"),
    ("a key used twice", "a: ${app.name}\nb: ${app.owner}-${app.name}\n", "a: shop\nb: team-a-shop\n"),
]


@pytest.mark.parametrize(("name", "template", "expected"), CASES, ids=[c[0] for c in CASES])
def test_render_template(name: str, template: str, expected: str) -> None:
    assert render_template("components/t.yaml", template.encode(), VALUES).decode() == expected


ERRORS = [
    ("unknown key", b"a: 1\nb: ${app.nope}\n", 2, "unknown template key ${app.nope}"),
    ("a mapping is not a scalar", b"a: ${env.labels}\n", 1, "unknown template key ${env.labels}"),
    ("unknown key on a whole line", b"a: 1\n\n${nothing}", 3, "unknown template key ${nothing}"),
    ("not UTF-8", b"a: 1\nb: \xff\n", 2, "template is not valid UTF-8"),
]


@pytest.mark.parametrize(("name", "data", "line", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_render_errors_name_file_and_line(name: str, data: bytes, line: int, message: str) -> None:
    with pytest.raises(RenderError) as caught:
        render_template("templates/web.yaml", data, VALUES)
    assert (caught.value.problem.path, caught.value.problem.line) == ("templates/web.yaml", line)
    assert message in caught.value.problem.message


def line_by_line(data: bytes, values: dict[str, Any]) -> bytes:
    """The reference: substitute each line on its own (the straightforward, slower algorithm)."""
    lookup = lookup_in(values)
    text = data.decode("utf-8").removeprefix("\ufeff")
    return "".join(scalar_text(substitute_string(line, lookup)) for line in text.splitlines(keepends=True)).encode()


def test_compiled_rendering_equals_line_by_line_substitution_on_the_example_fleet() -> None:
    tree = DirectoryTree.scan(EXAMPLE)
    repo = load_repo(tree).repo
    assert repo is not None
    rendered = 0
    for env in sorted(repo.environments.values(), key=lambda e: e.name)[::20]:
        for app_name, version in repo.desired_versions(env).items():
            app, release = repo.applications[app_name], repo.releases[(app_name, version)]
            for comp in app.components:
                values = template_values(env, app, release, comp)
                for path in comp.templates:
                    data = tree.read(path)
                    assert render_template(path, data, values) == line_by_line(data, values), (env.name, path)
                    rendered += 1
    assert rendered > 500


def test_a_template_is_compiled_once_per_content() -> None:
    compile_template.cache_clear()
    data = b"name: ${app.name}\nimage: ${component.image}\n"
    for _ in range(50):
        render_template("t.yaml", data, VALUES)
    info = compile_template.cache_info()
    assert (info.misses, info.hits) == (1, 49)
    assert compile_template("t.yaml", data).parts[0] == "name: "
