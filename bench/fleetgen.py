#!/usr/bin/env python3
"""Deterministic generator for a releases repository ("fleet").

It writes the committed example ``examples/releases-repo`` (60 applications, 35 regional branches x 5 stages
+ 12 shared platforms x 5 stages = 235 environments) and, with more branches and/or applications, synthetic
fleets of the same shape for benchmarks::

    python bench/fleetgen.py --out examples/releases-repo --force          # the committed example
    python bench/fleetgen.py --out /tmp/fleet1000 --branches 188           # 188 x 5 + 60 = 1,000 envs
    python bench/fleetgen.py --out /tmp/fleet5000 --branches 988           # 988 x 5 + 60 = 5,000 envs

Environments = branches x 5 stages + 12 shared platforms x 5 stages. Branch names past the 35 real cities are
``<city>-<n>``; applications past the 60 real ones are clones ``<app>-<n>`` whose dependencies and ``requires``
stay inside their clone group. Same arguments -> byte-identical output (no clock, no unseeded randomness: every
"random" choice is taken from a SHA-256 of a name).

Only the standard library and PyYAML are needed (``packaging``, when installed, double-checks the ``requires``
specifiers; a small built-in check covers the operators this generator writes otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

API_VERSION = "reconciler.io/v1"
REGISTRY = "registry.example.org"

# --------------------------------------------------------------------------------------------------------------
# The organisation
# --------------------------------------------------------------------------------------------------------------

# (name, promotesFrom, soak, protected)
STAGES = [
    ("dev", None, None, False),
    ("integration", "dev", "1h", False),
    ("recette", "integration", "4h", False),
    ("preproduction", "recette", "24h", True),
    ("production", "preproduction", "72h", True),
]
STAGE_NAMES = [s[0] for s in STAGES]

# 35 regional branches: (city, region). Order = expansion order of environments/branches.yaml.
BRANCHES = [
    ("lille", "nord"),
    ("amiens", "nord"),
    ("rouen", "nord"),
    ("arras", "nord"),
    ("valenciennes", "nord"),
    ("rennes", "ouest"),
    ("nantes", "ouest"),
    ("brest", "ouest"),
    ("caen", "ouest"),
    ("angers", "ouest"),
    ("strasbourg", "est"),
    ("metz", "est"),
    ("nancy", "est"),
    ("reims", "est"),
    ("mulhouse", "est"),
    ("bordeaux", "sud-ouest"),
    ("toulouse", "sud-ouest"),
    ("pau", "sud-ouest"),
    ("limoges", "sud-ouest"),
    ("la-rochelle", "sud-ouest"),
    ("lyon", "sud-est"),
    ("marseille", "sud-est"),
    ("nice", "sud-est"),
    ("grenoble", "sud-est"),
    ("montpellier", "sud-est"),
    ("orleans", "centre"),
    ("tours", "centre"),
    ("dijon", "centre"),
    ("clermont-ferrand", "centre"),
    ("besancon", "centre"),
    ("paris", "ile-de-france"),
    ("versailles", "ile-de-france"),
    ("creteil", "ile-de-france"),
    ("nanterre", "ile-de-france"),
    ("bobigny", "ile-de-france"),
]
LARGE_BRANCHES = {"lille", "nantes", "bordeaux", "toulouse", "lyon", "marseille", "paris"}
PILOT_BRANCHES = ["lille", "rennes", "montpellier"]

# 12 shared national platforms: (platform, hosting region, replicas)
PLATFORMS = [
    ("editique", "ouest", 2),
    ("paiement", "ile-de-france", 3),
    ("gateway", "ile-de-france", 4),
    ("referentiel", "centre", 3),
    ("decisionnel", "sud-ouest", 2),
    ("echanges", "nord", 2),
    ("identite", "ile-de-france", 3),
    ("archivage", "est", 2),
    ("messagerie", "sud-est", 2),
    ("supervision", "centre", 2),
    ("comptabilite", "ile-de-france", 2),
    ("telephonie", "nord", 2),
]

# 60 applications in dependency order (every dependency is listed before its dependents).
# (name, team, components, dependsOn, description)
# components: "api", "web", "api+web" (Kubernetes), "aix:NAME8CHR" or "aix:NAME8CHR+api" (COBOL batch on AIX,
# optionally with a Kubernetes api), "java" (a Java service on Linux).
APPS = [
    ("referentiel-adherents", "referentiels", "api", [], "Reference data for insured persons and their beneficiaries"),
    ("referentiel-employeurs", "referentiels", "api", [], "Reference data for employers and their establishments"),
    ("referentiel-organismes", "referentiels", "api", [], "Directory of partner bodies, banks and regional funds"),
    (
        "referentiel-geographique",
        "referentiels",
        "api",
        [],
        "Municipalities, postal codes and territorial competence of each branch",
    ),
    (
        "referentiel-nomenclatures",
        "referentiels",
        "java",
        [],
        "Shared code tables published to batch and online systems",
    ),
    ("habilitations", "socle", "api", [], "Agent roles, delegations and access rights"),
    ("gateway-api", "socle", "api", ["habilitations"], "API gateway for partners and front ends"),
    ("journalisation-audit", "socle", "api", [], "Tamper-evident audit log of agent actions"),
    ("signature-electronique", "socle", "api", ["habilitations"], "Electronic signature of decisions and certificates"),
    ("echanges-partenaires", "socle", "java", ["referentiel-organismes"], "EDI exchanges with partner bodies"),
    ("supervision-batch", "socle", "api+web", [], "Monitoring of the nightly batch chains"),
    ("gestion-documentaire", "editique", "java", [], "Document management for scanned and produced documents"),
    (
        "archivage-legal",
        "editique",
        "java",
        ["gestion-documentaire"],
        "Archiving of files and decisions with legal value",
    ),
    (
        "numerisation-courrier",
        "editique",
        "aix:NUMCOURR",
        ["gestion-documentaire"],
        "Scanning and indexing of incoming mail",
    ),
    (
        "editique-courrier",
        "editique",
        "aix:EDICOURR+api",
        ["gestion-documentaire", "referentiel-adherents"],
        "Letters and notifications sent to insured persons",
    ),
    ("editique-masse", "editique", "aix:EDIMASSE", [], "Mass mailings: annual statements and certificates"),
    ("calcul-droits", "famille", "api", ["referentiel-adherents"], "Entitlement rules engine for family benefits"),
    ("prestations-famille", "famille", "api+web", ["calcul-droits"], "Family benefit files, from claim to decision"),
    ("aides-logement", "famille", "api", ["calcul-droits"], "Housing allowances"),
    ("prime-activite", "famille", "api", ["calcul-droits"], "In-work benefit (prime d'activite)"),
    ("action-sociale", "famille", "api+web", ["calcul-droits"], "Discretionary social aid and grants"),
    ("comptabilite-generale", "paiement", "aix:COMPTGEN", [], "General ledger and period closing"),
    ("tresorerie", "paiement", "java", ["comptabilite-generale"], "Cash management and bank balances"),
    ("virements-sepa", "paiement", "java", ["referentiel-organismes"], "SEPA credit transfer files"),
    (
        "paiement-prestations",
        "paiement",
        "aix:PAIPREST+api",
        ["prestations-famille", "virements-sepa"],
        "Benefit payment runs",
    ),
    ("rapprochement-bancaire", "paiement", "aix:RAPBANCA", ["virements-sepa"], "Bank reconciliation"),
    (
        "declarations-employeurs",
        "recouvrement",
        "api+web",
        ["referentiel-employeurs"],
        "Intake of employer social declarations",
    ),
    (
        "affiliation-employeurs",
        "recouvrement",
        "api",
        ["referentiel-employeurs"],
        "Employer registration and affiliation",
    ),
    (
        "recouvrement-cotisations",
        "recouvrement",
        "aix:RECOUCOT+api",
        ["declarations-employeurs"],
        "Contribution collection and dunning",
    ),
    (
        "controle-cotisations",
        "recouvrement",
        "java",
        ["declarations-employeurs"],
        "Contribution audits and adjustments",
    ),
    ("gestion-contentieux", "contentieux", "api+web", ["recouvrement-cotisations"], "Litigation and legal proceedings"),
    ("indus-recuperation", "contentieux", "aix:INDUSREC", ["calcul-droits"], "Recovery of overpaid benefits"),
    ("mediation", "contentieux", "web", [], "Mediation requests from insured persons"),
    ("gestion-agents", "rh", "java", [], "Staff records and careers"),
    ("paie-agents", "rh", "aix:PAIEAGNT+api", ["gestion-agents"], "Monthly staff payroll"),
    ("annuaire-agents", "rh", "api", ["gestion-agents"], "Staff directory"),
    ("planning-agents", "rh", "web", ["annuaire-agents"], "Team schedules and absences"),
    ("formation-agents", "rh", "web", [], "Staff training catalogue"),
    ("retraite-carriere", "retraite", "aix:RETCARRI", ["referentiel-adherents"], "Career records for pension rights"),
    ("retraite-liquidation", "retraite", "api", ["retraite-carriere"], "Pension claim processing"),
    ("simulateur-retraite", "retraite", "api+web", ["retraite-liquidation"], "Online pension simulator"),
    ("pensions-invalidite", "retraite", "aix:PENSINVA", [], "Disability pensions"),
    ("capital-deces", "retraite", "aix:CAPDECES", [], "Death benefit payments"),
    ("remboursements-sante", "sante", "aix:REMBSANT+api", ["referentiel-adherents"], "Healthcare reimbursements"),
    ("tiers-payant", "sante", "java", ["remboursements-sante"], "Third-party payment with health professionals"),
    ("arrets-travail", "sante", "api", ["referentiel-employeurs"], "Sick leave and daily allowances"),
    ("paiement-indemnites", "sante", "aix:PAIEINDM", ["arrets-travail"], "Daily allowance payments"),
    (
        "espace-assure",
        "relation-usagers",
        "web",
        ["gateway-api", "prestations-famille"],
        "Online account of insured persons",
    ),
    ("bff-mobile", "relation-usagers", "api", ["gateway-api"], "Backend for the mobile application"),
    (
        "prise-rendez-vous",
        "relation-usagers",
        "api+web",
        ["referentiel-geographique"],
        "Appointment booking in local offices",
    ),
    ("messagerie-usagers", "relation-usagers", "api", ["habilitations"], "Secure messaging with insured persons"),
    ("gestion-reclamations", "relation-usagers", "api+web", ["messagerie-usagers"], "Complaint handling"),
    ("centre-contacts", "relation-usagers", "api", [], "Contact centre agent desktop"),
    ("depot-pieces", "relation-usagers", "api", ["gestion-documentaire"], "Upload of supporting documents"),
    ("notifications", "relation-usagers", "api", [], "Email and SMS notifications"),
    ("entrepot-donnees", "decisionnel", "java", [], "Data warehouse loading"),
    ("tableaux-bord", "decisionnel", "web", ["entrepot-donnees"], "Management dashboards"),
    ("statistiques-nationales", "decisionnel", "aix:STATNATI", [], "National statistics extraction"),
    ("lutte-fraude", "decisionnel", "api", ["entrepot-donnees"], "Fraud detection scoring"),
    ("donnees-ouvertes", "decisionnel", "api", [], "Open data publication"),
]

# Hand-picked release histories (oldest first); every other application gets one derived from its name.
FIXED_VERSIONS = {
    "referentiel-adherents": ["3.0.2", "3.1.0", "3.1.4", "3.2.0"],
    "prestations-famille": ["2.3.0", "2.3.1", "2.4.0"],
    "calcul-droits": ["1.8.5", "1.9.2", "1.10.0"],  # 1.10.0 > 1.9.2: versions are not sorted as text
    "referentiel-geographique": ["1.8", "1.9", "1.10"],  # `version: 1.10` would be 1.1 if read as a float
}

# ``requires`` constraints: (application, required application, which release, with an upper bound).
# "newest" is the release in dev, "production" the one in production. The specifier is computed from the
# required application's versions in the stages that run the release, so it holds everywhere.
REQUIRES = [
    ("prestations-famille", "referentiel-adherents", "newest", False),
    ("calcul-droits", "referentiel-adherents", "newest", True),
    ("paiement-prestations", "prestations-famille", "newest", False),
    ("simulateur-retraite", "retraite-liquidation", "newest", True),
    ("retraite-liquidation", "retraite-carriere", "production", False),
    ("tiers-payant", "remboursements-sante", "newest", False),
    ("gestion-contentieux", "recouvrement-cotisations", "newest", False),
    ("espace-assure", "gateway-api", "newest", True),
    ("paie-agents", "gestion-agents", "production", True),
    ("action-sociale", "calcul-droits", "newest", False),
    ("lutte-fraude", "entrepot-donnees", "newest", False),
]

# Index of the release (oldest = 0) that each stage runs, dev -> production; dev always has the newest.
STAGE_PATTERNS = {
    2: [(1, 1, 1, 0, 0), (1, 0, 0, 0, 0), (1, 1, 1, 1, 1)],
    3: [(2, 2, 1, 1, 0), (2, 1, 1, 0, 0), (2, 2, 2, 1, 1)],
    4: [(3, 2, 2, 1, 0), (3, 3, 2, 1, 1), (3, 2, 1, 1, 0)],
}

RELEASE_NOTES = [
    "Bug fixes and dependency upgrades.",
    "Regulatory update: 2026 scales and ceilings.",
    "Performance work on the nightly batch.",
    "Accessibility fixes on the agent screens.",
    "New fields required by the national data exchange.",
    "Security patches (base image and libraries).",
    "Error messages reworded after user feedback.",
]

RESOURCE_PROFILES = [("100m", "256Mi", "500m", "512Mi"), ("250m", "512Mi", "1", "1Gi"), ("500m", "1Gi", "2", "2Gi")]
PROBE_PATHS = ["/actuator/health/readiness", "/health/ready"]

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("/".join(parts).encode()).digest()


def _sha(*parts: str) -> str:
    return "sha256:" + hashlib.sha256(("fleetgen/" + "/".join(parts)).encode()).hexdigest()


def _vkey(version: str) -> tuple[int, ...]:
    parts = [int(p) for p in version.split(".")]
    return tuple(parts + [0] * (4 - len(parts)))


# --------------------------------------------------------------------------------------------------------------
# A small YAML writer: block style, stable key order, flow style only where asked (short label maps, lists).
# --------------------------------------------------------------------------------------------------------------


class Raw(str):
    """A scalar written as is, unquoted (versions such as 1.10: the loader keeps their exact text)."""


class Flow(dict[str, Any]):
    """A mapping written in flow style (``{a: b}``) when it fits on the line."""


class FlowList(list[Any]):
    """A sequence written in flow style (``[a, b]``) when it fits on the line."""


_WIDTH = 110
_PLAIN = re.compile(r"^[\w./(][\w ./@+()',:;-]*$")


def _plain_ok(s: str, flow: bool) -> bool:
    if not s or s != s.strip() or "${" in s:
        return False
    if not _PLAIN.match(s):
        return False
    if ": " in s or " #" in s or s.endswith(":") or ("'" in s and s[0] == "'"):
        return False
    if flow and any(c in s for c in ",[]{}"):
        return False
    try:
        return bool(yaml.safe_load(s) == s)
    except yaml.YAMLError:
        return False


def _scalar(v: Any, flow: bool = False) -> str:
    if isinstance(v, Raw):
        return str(v)
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v if _plain_ok(v, flow) else json.dumps(v, ensure_ascii=False)
    raise TypeError(f"cannot write {type(v).__name__}")


def _flow(v: Any) -> str:
    def item(x: Any) -> str:
        return _flow(x) if isinstance(x, (dict, list)) else _scalar(x, True)

    if isinstance(v, dict):
        return "{" + ", ".join(f"{_scalar(k, True)}: {item(x)}" for k, x in v.items()) + "}"
    return "[" + ", ".join(item(x) for x in v) + "]"


def _inline(v: Any, used: int) -> str | None:
    """v as a one-line value if it should be written that way, else None."""
    if isinstance(v, (dict, list)):
        if not v:
            return "{}" if isinstance(v, dict) else "[]"
        if isinstance(v, (Flow, FlowList)):
            text = _flow(v)
            if used + len(text) <= _WIDTH:
                return text
        return None
    return _scalar(v)


def _emit(v: Any, indent: int, out: list[str]) -> None:
    pad = " " * indent
    if isinstance(v, dict):
        for k, x in v.items():
            key = _scalar(k)
            text = _inline(x, indent + len(key) + 2)
            if text is not None:
                out.append(f"{pad}{key}: {text}")
            else:
                out.append(f"{pad}{key}:")
                _emit(x, indent + 2, out)
    elif isinstance(v, list):
        for x in v:
            text = _inline(x, indent + 2)
            if text is not None:
                out.append(f"{pad}- {text}")
            elif isinstance(x, dict):
                sub: list[str] = []
                _emit(x, indent + 2, sub)
                out.append(f"{pad}- {sub[0][indent + 2 :]}")
                out.extend(sub[1:])
            else:
                raise TypeError("nested lists are not written by this generator")
    else:
        raise TypeError("top level must be a mapping or a list")


def dump(doc: dict[str, Any], comment: str = "") -> str:
    lines = [f"# {line}" if line else "#" for line in comment.splitlines()] if comment else []
    _emit(doc, 0, lines)
    return "\n".join(lines) + "\n"


def manifest(kind: str, name: str, spec: dict[str, Any], labels: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = Flow(labels)
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "spec": spec}


# --------------------------------------------------------------------------------------------------------------
# The model of the fleet
# --------------------------------------------------------------------------------------------------------------


def _branches(n: int) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        city, region = BRANCHES[i % len(BRANCHES)]
        k = i // len(BRANCHES) + 1
        out.append((city if k == 1 else f"{city}-{k}", region))
    return out


def _apps(n: int) -> list[dict[str, Any]]:
    """The first n applications: the real ones, then clone groups <app>-2, <app>-3, ... (deps stay in group)."""
    apps = []
    for i in range(n):
        name, team, comps, deps, desc = APPS[i % len(APPS)]
        k = i // len(APPS) + 1

        def rename(x: str, k: int = k) -> str:
            return x if k == 1 else f"{x}-{k}"

        components: list[dict[str, Any]] = []
        for part in comps.split("+"):
            if part in ("api", "web"):
                components.append({"name": part, "target": "kubernetes"})
            elif part.startswith("aix:"):
                art = part[4:]
                if k > 1:
                    art = f"{art[:6]}{k:02d}"
                components.append({"name": "batch", "target": "aix", "artifact": {"name": art, "type": "cobol"}})
            elif part == "java":
                components.append(
                    {"name": "service", "target": "linux", "artifact": {"name": rename(name), "type": "java"}}
                )
            else:
                raise ValueError(part)
        apps.append(
            {
                "name": rename(name),
                "base": name,
                "group": k,
                "team": team,
                "description": desc,
                "dependsOn": [rename(d) for d in deps],
                "components": components,
            }
        )
    return apps


def _versions(app: dict[str, Any]) -> list[str]:
    if app["group"] == 1 and app["name"] in FIXED_VERSIONS:
        return list(FIXED_VERSIONS[app["name"]])
    d = _digest("versions", app["name"])
    count = 2 + d[0] % 3
    major, minor, patch = 1 + d[1] % 5, d[2] % 13, d[3] % 6
    out = [f"{major}.{minor}.{patch}"]
    for i in range(1, count):
        r = d[4 + i] % 10
        if r == 0:
            major, minor, patch = major + 1, 0, 0
        elif r < 5:
            minor, patch = minor + 1, 0
        else:
            patch += 1
        out.append(f"{major}.{minor}.{patch}")
    return out


def _specifier_holds(spec: str, version: str) -> bool:
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # the generator only writes ">=X.Y" and "<N" clauses
        for clause in spec.split(","):
            m = re.match(r"^(>=|<)(.+)$", clause.strip())
            assert m is not None, clause
            op, ref = m.groups()
            ok = _vkey(version) >= _vkey(ref) if op == ">=" else _vkey(version) < _vkey(ref)
            if not ok:
                return False
        return True
    return SpecifierSet(spec).contains(version, prereleases=True)


def build(branches: int = 35, apps: int = 60) -> dict[str, Any]:
    """The whole fleet as plain data (no files)."""
    if branches < 1:
        raise ValueError("--branches must be at least 1")
    if not 1 <= apps <= 99 * len(APPS):
        raise ValueError(f"--apps must be between 1 and {99 * len(APPS)}")
    app_list = _apps(apps)
    by_name = {a["name"]: a for a in app_list}
    for a in app_list:
        a["versions"] = _versions(a)
        assert a["versions"] == sorted(a["versions"], key=_vkey) and len(set(a["versions"])) == len(a["versions"])
        pats = STAGE_PATTERNS[len(a["versions"])]
        pattern = pats[_digest("pattern", a["name"])[0] % len(pats)]
        a["stage_versions"] = {s: a["versions"][i] for s, i in zip(STAGE_NAMES, pattern, strict=True)}
        a["requires"] = {}  # version -> list of (application, specifier)
    # requires: computed so that they hold in every stage that runs the release
    for group in sorted({a["group"] for a in app_list}):
        for dep, req, which, upper in REQUIRES:
            dep_name, req_name = (dep, req) if group == 1 else (f"{dep}-{group}", f"{req}-{group}")
            if dep_name not in by_name or req_name not in by_name:
                continue
            a, r = by_name[dep_name], by_name[req_name]
            version = a["versions"][-1] if which == "newest" else a["stage_versions"]["production"]
            stages = [s for s in STAGE_NAMES if a["stage_versions"][s] == version]
            lowest = min((r["stage_versions"][s] for s in stages), key=_vkey)
            major, minor = [*lowest.split("."), "0"][:2]
            spec = f">={major}.{minor}" + (f",<{int(major) + 1}" if upper else "")
            for s in stages:
                assert _specifier_holds(spec, r["stage_versions"][s]), (dep_name, spec, s)
            a["requires"].setdefault(version, []).append((req_name, spec))
    # sanity: names, artifact names, dependencies
    seen_art: set[str] = set()
    for a in app_list:
        assert DNS_LABEL.match(a["name"]), a["name"]
        for d in a["dependsOn"]:
            assert d in by_name, (a["name"], d)
        for c in a["components"]:
            art = c.get("artifact")
            if art and art["type"] == "cobol":
                assert re.match(r"^[A-Z][A-Z0-9]{7}$", art["name"]) and art["name"] not in seen_art, art
                seen_art.add(art["name"])
    return {"branches": _branches(branches), "apps": app_list}


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------

TEMPLATE_FILES = ("templates/deployment.yaml", "templates/service.yaml", "templates/configmap.yaml")


def _k8s_templates(app: dict[str, Any], by_name: dict[str, Any]) -> dict[str, str]:
    d = _digest("k8s", app["name"])
    cpu_req, mem_req, cpu_lim, mem_lim = RESOURCE_PROFILES[d[0] % len(RESOURCE_PROFILES)]
    cpu_lim_text = cpu_lim if cpu_lim.endswith("m") else f'"{cpu_lim}"'  # a bare 1 or 2 is a YAML number
    probe = PROBE_PATHS[d[1] % len(PROBE_PATHS)]
    domain = app["team"]
    labels = (
        "    app.kubernetes.io/name: ${app.name}\n"
        "    app.kubernetes.io/component: ${component.name}\n"
        '    app.kubernetes.io/version: "${release.version}"\n'
        f"    app.kubernetes.io/part-of: {domain}\n"
        "    secu.example.org/environment: ${env.name}\n"
        "    secu.example.org/stage: ${env.stage}\n"
    )
    deployment = (
        "apiVersion: apps/v1\n"
        "kind: Deployment\n"
        "metadata:\n"
        "  name: ${app.name}-${component.name}\n"
        "  namespace: ${params.namespace}\n"
        "  labels:\n" + labels + "spec:\n"
        "  replicas: ${params.replicas}\n"
        "  revisionHistoryLimit: 3\n"
        "  selector:\n"
        "    matchLabels:\n"
        "      app.kubernetes.io/name: ${app.name}\n"
        "      app.kubernetes.io/component: ${component.name}\n"
        "  template:\n"
        "    metadata:\n"
        "      labels:\n"
        "        app.kubernetes.io/name: ${app.name}\n"
        "        app.kubernetes.io/component: ${component.name}\n"
        '        app.kubernetes.io/version: "${release.version}"\n'
        "    spec:\n"
        "      containers:\n"
        "        - name: ${component.name}\n"
        "          image: ${component.image}\n"
        "          ports:\n"
        "            - name: http\n"
        "              containerPort: 8080\n"
        "          envFrom:\n"
        "            - configMapRef:\n"
        "                name: ${app.name}-${component.name}\n"
        "          readinessProbe:\n"
        "            httpGet:\n"
        f"              path: {probe}\n"
        "              port: http\n"
        "            initialDelaySeconds: 10\n"
        "            periodSeconds: 10\n"
        "          resources:\n"
        f"            requests: {{cpu: {cpu_req}, memory: {mem_req}}}\n"
        f"            limits: {{cpu: {cpu_lim_text}, memory: {mem_lim}}}\n"
    )
    service = (
        "apiVersion: v1\n"
        "kind: Service\n"
        "metadata:\n"
        "  name: ${app.name}-${component.name}\n"
        "  namespace: ${params.namespace}\n"
        "  labels:\n" + labels + "spec:\n"
        "  type: ClusterIP\n"
        "  selector:\n"
        "    app.kubernetes.io/name: ${app.name}\n"
        "    app.kubernetes.io/component: ${component.name}\n"
        "  ports:\n"
        "    - name: http\n"
        "      port: 80\n"
        "      targetPort: http\n"
        "      protocol: TCP\n"
    )
    deps = ""
    for dep in app["dependsOn"]:
        comps = [c["name"] for c in by_name[dep]["components"] if c["target"] == "kubernetes"]
        if "api" in comps:
            var = dep.upper().replace("-", "_") + "_URL"
            deps += f'  {var}: "http://{dep}-api.${{params.namespace}}.svc.cluster.local"\n'
    configmap = (
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        "  name: ${app.name}-${component.name}\n"
        "  namespace: ${params.namespace}\n"
        "  labels:\n" + labels + "data:\n"
        '  APP_NAME: "${app.name}"\n'
        '  APP_VERSION: "${release.version}"\n'
        '  ENVIRONMENT: "${env.name}"\n'
        '  STAGE: "${env.stage}"\n'
        '  REGION: "${env.labels.region}"\n'
        '  LOG_LEVEL: "${params.logLevel}"\n'
        '  PUBLIC_URL: "https://${params.domain}/${app.name}"\n' + deps
    )
    return {TEMPLATE_FILES[0]: deployment, TEMPLATE_FILES[1]: service, TEMPLATE_FILES[2]: configmap}


def _application(app: dict[str, Any]) -> dict[str, Any]:
    components = []
    for c in app["components"]:
        entry: dict[str, Any] = {"name": c["name"], "target": c["target"]}
        if "artifact" in c:
            entry["artifact"] = Flow(c["artifact"])
        else:
            entry["templates"] = list(TEMPLATE_FILES)
        components.append(entry)
    spec: dict[str, Any] = {"owner": f"team-{app['team']}", "description": app["description"]}
    if app["dependsOn"]:
        spec["dependsOn"] = FlowList(app["dependsOn"])
    spec["components"] = components
    return manifest("Application", app["name"], spec, {"domain": app["team"]})


def _release(app: dict[str, Any], version: str) -> dict[str, Any]:
    comps: dict[str, Any] = {}
    for c in app["components"]:
        art = c.get("artifact")
        if art is None:
            comps[c["name"]] = {
                "image": f"{REGISTRY}/{app['team']}/{app['name']}-{c['name']}:{version}",
                "digest": _sha("image", app["name"], c["name"], version),
            }
        else:
            ext = "jar" if art["type"] == "java" else "tar.gz"
            comps[c["name"]] = {
                "artifact": f"{art['name'].lower()}-{version}.{ext}",
                "checksum": _sha("artifact", app["name"], c["name"], version),
            }
    spec: dict[str, Any] = {"application": app["name"], "version": Raw(version), "components": comps}
    reqs = app["requires"].get(version)
    if reqs:
        spec["requires"] = [{"application": r, "version": s} for r, s in reqs]
    spec["notes"] = RELEASE_NOTES[_digest("notes", app["name"], version)[0] % len(RELEASE_NOTES)]
    return manifest("Release", f"{app['name']}-{version.replace('.', '-')}", spec)


def _stage(index: int, apps: list[dict[str, Any]], n_envs: int, pilots: list[str]) -> tuple[dict[str, Any], str]:
    name, promotes_from, soak, protected = STAGES[index]
    spec: dict[str, Any] = {}
    if promotes_from:
        spec["promotesFrom"] = promotes_from
    if soak:
        spec["soak"] = soak
    spec["protected"] = protected
    spec["selfHeal"] = True
    spec["releases"] = {a["name"]: Raw(a["stage_versions"][name]) for a in sorted(apps, key=lambda a: a["name"])}
    if name == "production":
        waves: list[dict[str, Any]] = []
        if pilots:
            waves.append({"name": "pilot", "selector": Flow({"branch": FlowList(pilots)})})
        waves.append({"name": "rest", "maxParallel": 10})
        spec["waves"] = waves
    how = (
        f"Promote: set an application's version to the one that has soaked in {promotes_from} for {soak}."
        if promotes_from
        else "Deploy a new release: add releases/<app>/<version>.yaml and set its version here."
    )
    comment = f"Stage {name}: the version of every application in its {n_envs} environments.\n{how}" + (
        "\nProtected: the merge commit must be signed by an allowed key." if protected else ""
    )
    return manifest("Stage", name, spec), comment


def _branch_set(branches: list[tuple[str, str]]) -> dict[str, Any]:
    return manifest(
        "EnvironmentSet",
        "branches",
        {
            "generator": {
                "list": [
                    Flow({"branch": b, "region": r, "replicas": 3 if b in LARGE_BRANCHES else 2}) for b, r in branches
                ],
                "matrix": {"stage": FlowList(STAGE_NAMES)},
            },
            "template": {
                "metadata": {
                    "name": "${branch}-${stage}",
                    "labels": Flow(
                        {"scope": "branch", "branch": "${branch}", "region": "${region}", "stage": "${stage}"}
                    ),
                },
                "spec": {
                    "stage": "${stage}",
                    "targets": {
                        "kubernetes": "k8s-${region}-${stage}",
                        "aix": "aix-${branch}-${stage}",
                        "linux": "linux-${branch}-${stage}",
                    },
                    "parameters": {
                        "namespace": "${branch}-${stage}",
                        "replicas": "${replicas}",
                        "domain": "${branch}.${stage}.secu.example.org",
                        "logLevel": "info",
                    },
                },
            },
        },
    )


def _shared_set() -> dict[str, Any]:
    return manifest(
        "EnvironmentSet",
        "shared",
        {
            "generator": {
                "list": [Flow({"platform": p, "region": r, "replicas": n}) for p, r, n in PLATFORMS],
                "matrix": {"stage": FlowList(STAGE_NAMES)},
            },
            "template": {
                "metadata": {
                    "name": "shared-${platform}-${stage}",
                    "labels": Flow(
                        {"scope": "shared", "platform": "${platform}", "region": "${region}", "stage": "${stage}"}
                    ),
                },
                "spec": {
                    "stage": "${stage}",
                    "targets": {
                        "kubernetes": "k8s-${platform}-${stage}",
                        "aix": "aix-${platform}-${stage}",
                        "linux": "linux-${platform}-${stage}",
                    },
                    "parameters": {
                        "namespace": "${platform}-${stage}",
                        "replicas": "${replicas}",
                        "domain": "${platform}.${stage}.secu.example.org",
                        "logLevel": "info",
                    },
                },
            },
        },
    )


def _freezes(app_names: set[str]) -> dict[str, str]:
    out = {
        "freezes/year-end.yaml": dump(
            manifest(
                "FreezeWindow",
                "year-end",
                {
                    "reason": "Year-end closing of the 2025 accounts",
                    "scope": {"stages": FlowList(["production"])},
                    "absolute": [Flow({"start": "2025-12-19T18:00:00+01:00", "end": "2026-01-05T08:00:00+01:00"})],
                    "driftRepair": True,
                },
            )
        )
    }
    if "paie-agents" in app_names:
        out["freezes/paie-closing.yaml"] = dump(
            manifest(
                "FreezeWindow",
                "paie-closing",
                {
                    "reason": "Monthly payroll closing, no change to paie-agents in production",
                    "scope": {"stages": FlowList(["production"]), "applications": FlowList(["paie-agents"])},
                    "recurring": [Flow({"cron": "0 20 28 * *", "duration": "36h", "timezone": "Europe/Paris"})],
                    "driftRepair": True,
                },
            ),
            "From the 28th of each month at 20:00 (Paris) for 36 hours.",
        )
    return out


README = """\
# Releases repository

This repository is the desired state of every deployment: {apps} applications on {envs} environments
({branches} regional branches x {stages} stages + {platforms} shared platforms x {stages} stages). The reconciler
deploys what is merged here; nobody deploys by hand. The format is described in `docs/manifests.md` of the
reconciler.

## Layout

| path | what |
| --- | --- |
| `applications/<app>/application.yaml` | an application: owner team, components, `dependsOn` |
| `applications/<app>/templates/` | Kubernetes manifests of the app, with `${{...}}` placeholders |
| `releases/<app>/<version>.yaml` | one release: image + digest or artifact + checksum per component, `requires` |
| `stages/<stage>.yaml` | the version of every application in a stage: {stage_chain} |
| `environments/branches.yaml` | the {branch_envs} branch environments (`<branch>-<stage>`), from one list x stages |
| `environments/shared.yaml` | the {shared_envs} shared platform environments (`shared-<platform>-<stage>`) |
| `freezes/` | change freezes (year-end closing, monthly payroll closing of `paie-agents`) |

## Release and promote

1. Add `releases/<app>/<version>.yaml` (copy the previous one; one entry per component of the application).
2. Deploy it to dev: set `<app>: <version>` under `spec.releases` in `stages/dev.yaml`.
3. Promote it: once it has run in a stage for that stage's soak time, move the same version to the next stage
   file. `preproduction` and `production` are protected: the merge must be signed by an allowed key, and a
   change to production rolls out in waves (pilot branches first, then 10 environments at a time).

A release's `requires` (an application and a version specifier such as `">=3.2"` or `">=1.4,<2"`) must hold
in every environment that runs the release: promote the required application first.

## Pin a version in one environment

Pins go on explicit `Environment` manifests; an environment generated by a set cannot carry one. To pin an
app in `lille-production`: remove `lille` from the list in `environments/branches.yaml`, write its five
environments in `environments/lille.yaml` as `Environment` documents (same names, labels, targets and
parameters as the set generates) and add `pins: {{<app>: <version>}}` to the one that needs it. Remove the pin
and put the branch back in the list as soon as the stage catches up.

## Add an application

Create `applications/<app>/application.yaml` (a DNS-label name, an owner team, components with a target role:
`kubernetes` with `templates`, `aix` or `linux` with an `artifact`), add its first release under `releases/<app>/`
and add the app to `stages/dev.yaml` (and later to the other stages). Templates may use `${{env.name}}`,
`${{env.stage}}`, `${{env.labels.<key>}}`, `${{params.<key>}}`, `${{app.name}}`, `${{release.version}}`,
`${{component.name}}`, `${{component.image}}` and `${{component.digest}}`.

## Checks on every pull request

CI runs `reconciler validate` (every error as `path:line: message`) and `reconciler plan` (what changes in which
environment, blast radius, policy verdicts: freezes, soak, `requires`), and posts the plan on the pull request.
Run them locally before pushing:

```sh
reconciler validate .
reconciler plan --repo . --base origin/main --head HEAD
```
"""


def render(branches: int = 35, apps: int = 60) -> tuple[dict[str, str], dict[str, Any]]:
    """Every file of the fleet (relative path -> text) and the counts."""
    fleet = build(branches, apps)
    app_list, branch_list = fleet["apps"], fleet["branches"]
    by_name = {a["name"]: a for a in app_list}
    n_envs_per_stage = len(branch_list) + len(PLATFORMS)
    pilots = [b for b in PILOT_BRANCHES if b in {name for name, _ in branch_list}]
    files: dict[str, str] = {}
    releases = 0
    for a in app_list:
        base = f"applications/{a['name']}"
        files[f"{base}/application.yaml"] = dump(_application(a))
        if any(c["target"] == "kubernetes" for c in a["components"]):
            for path, text in _k8s_templates(a, by_name).items():
                files[f"{base}/{path}"] = text
        for v in a["versions"]:
            files[f"releases/{a['name']}/{v}.yaml"] = dump(_release(a, v))
            releases += 1
    for i, (name, *_rest) in enumerate(STAGES):
        doc, comment = _stage(i, app_list, n_envs_per_stage, pilots)
        files[f"stages/{name}.yaml"] = dump(doc, comment)
    files["environments/branches.yaml"] = dump(
        _branch_set(branch_list),
        f"{len(branch_list)} regional branches x {len(STAGES)} stages = {len(branch_list) * len(STAGES)} environments.",
    )
    files["environments/shared.yaml"] = dump(
        _shared_set(),
        f"{len(PLATFORMS)} shared national platforms x {len(STAGES)} stages = "
        f"{len(PLATFORMS) * len(STAGES)} environments.",
    )
    files.update(_freezes(set(by_name)))
    environments = n_envs_per_stage * len(STAGES)
    files["README.md"] = README.format(
        apps=len(app_list),
        envs=environments,
        branches=len(branch_list),
        stages=len(STAGES),
        platforms=len(PLATFORMS),
        stage_chain=" -> ".join(STAGE_NAMES),
        branch_envs=len(branch_list) * len(STAGES),
        shared_envs=len(PLATFORMS) * len(STAGES),
    )
    for path, text in files.items():
        if path.endswith(".yaml") and "/templates/" not in path:
            list(yaml.safe_load_all(text))  # every manifest file parses
    counts = {
        "applications": len(app_list),
        "releases": releases,
        "stages": len(STAGES),
        "environment_sets": 2,
        "environments": environments,
        "branch_environments": len(branch_list) * len(STAGES),
        "shared_environments": len(PLATFORMS) * len(STAGES),
        "freezes": sum(1 for p in files if p.startswith("freezes/")),
        "files": len(files),
        "bytes": sum(len(t.encode()) for t in files.values()),
    }
    return dict(sorted(files.items())), counts


_OWN_ENTRIES = {"applications", "releases", "stages", "environments", "freezes", "README.md"}


def _looks_generated(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and {p.name for p in path.iterdir()} <= _OWN_ENTRIES


def generate(out: Path, branches: int = 35, apps: int = 60, *, force: bool = False) -> dict[str, Any]:
    """Write the fleet into `out` and return its counts.

    `out` must not exist or be an empty directory; with force=True an existing output of this generator is
    replaced (a directory holding anything else is never deleted).
    """
    out = Path(out)
    files, counts = render(branches, apps)
    if out.exists() or out.is_symlink():
        empty = out.is_dir() and not out.is_symlink() and not any(out.iterdir())
        if not empty:
            if not force:
                raise FileExistsError(f"{out} exists (use --force to replace it)")
            if not _looks_generated(out):
                raise FileExistsError(f"{out} holds files this generator did not write; not deleting it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode("utf-8"))
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path, help="directory to write (must not exist)")
    parser.add_argument(
        "--branches",
        type=int,
        default=35,
        help="regional branches; environments = (branches + 12) x 5 (default 35 -> 235)",
    )
    parser.add_argument("--apps", type=int, default=60, help="applications (default 60)")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    try:
        counts = generate(args.out, branches=args.branches, apps=args.apps, force=args.force)
    except (FileExistsError, ValueError) as exc:
        print(f"fleetgen: {exc}", file=sys.stderr)
        return 1
    print(f"fleetgen: wrote {args.out}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
