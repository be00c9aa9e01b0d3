"""The jambonz callback JSON schemas (from the installed jambonz-python-sdk), for checking the
hook bodies confroom really sent. Independent of confroom's own schema loading on purpose."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jambonz_sdk
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMA_DIR = Path(jambonz_sdk.__file__).parent / "schema"
CALLBACKS = "https://jambonz.org/schema/callbacks/"


@functools.cache
def _registry() -> Registry:
    resources = []
    for path in SCHEMA_DIR.rglob("*.json"):
        doc = json.loads(path.read_text())
        if "$id" in doc:
            resources.append(
                (doc["$id"], Resource.from_contents(doc, default_specification=DRAFT202012))
            )
    return Registry().with_resources(resources)


def schema_errors(name: str, body: Any, without: Iterable[str] = ()) -> list[str]:
    """Every violation of callbacks/<name>.schema.json by `body` (empty when it validates),
    formats (date-time, ...) included. Fields named in `without` are left out of both the
    body and the schema (its properties and required list)."""
    registry = _registry()
    schema = dict(registry.contents(CALLBACKS + name))
    drop = set(without)
    if drop:
        body = {k: v for k, v in body.items() if k not in drop}
        schema["properties"] = {
            k: v for k, v in schema.get("properties", {}).items() if k not in drop
        }
        schema["required"] = [k for k in schema.get("required", []) if k not in drop]
    validator = Draft202012Validator(
        schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    return [f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors]
