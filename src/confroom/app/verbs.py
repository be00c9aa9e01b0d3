"""Verb lists: normalising both jambonz spellings and validating them with the jambonz schemas.

Owns the schema registry (loaded once from the installed `jambonz_sdk` package, `$ref`s
resolved by `$id`), the cached validators, the set of verbs confroom runs, and `VerbError`,
whose message names the verb (with its position) and the attribute at fault.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMA_BASE = "https://jambonz.org/schema/"
VERB_BASE = SCHEMA_BASE + "verbs/"
CALLBACK_BASE = SCHEMA_BASE + "callbacks/"

SUPPORTED: frozenset[str] = frozenset(
    {
        "answer", "say", "play", "pause", "hangup", "sip:decline", "redirect", "conference",
        "gather", "leave", "dial",
    }
)
# Verbs allowed in lists returned by waitHook / enterHook (spec 3.1).
MEDIA_ONLY: frozenset[str] = frozenset({"play", "say", "pause"})
# ... and by a conference waitHook (waiting or on hold): `leave` takes the caller out.
WAIT_HOOK_VERBS: frozenset[str] = MEDIA_ONLY | {"leave"}


class VerbError(ValueError):
    """A verb list was rejected. `index` is the 0-based position of the verb at fault
    (the message shows it 1-based as `verb #n`)."""

    def __init__(
        self,
        message: str,
        *,
        index: int | None = None,
        verb: str | None = None,
        attribute: str | None = None,
    ) -> None:
        super().__init__(message)
        self.index = index
        self.verb = verb
        self.attribute = attribute


# --------------------------------------------------------------------------- schemas


@cache
def schema_registry() -> Registry[Any]:
    """Every jambonz schema (verbs, components, callbacks) keyed by its `$id`."""
    root = resources.files("jambonz_sdk") / "schema"
    pairs: list[tuple[str, Resource[Any]]] = []
    for sub in ("verbs", "components", "callbacks"):
        for entry in (root / sub).iterdir():
            if not entry.name.endswith(".schema.json"):
                continue
            contents = json.loads(entry.read_text(encoding="utf-8"))
            resource = Resource.from_contents(contents, default_specification=DRAFT202012)
            pairs.append((str(contents["$id"]), resource))
    return Registry().with_resources(pairs)


@cache
def known_verbs() -> frozenset[str]:
    """Every verb name jambonz defines (the last segment of each verb schema's `$id`)."""
    return frozenset(
        uri.removeprefix(VERB_BASE) for uri in schema_registry() if uri.startswith(VERB_BASE)
    )


@cache
def validator_for(schema_id: str) -> Draft202012Validator:
    """A cached validator for the schema with `$id` (or `$id` relative to SCHEMA_BASE)."""
    uri = schema_id if "://" in schema_id else SCHEMA_BASE + schema_id
    schema = schema_registry().contents(uri)
    return Draft202012Validator(schema, registry=schema_registry())


def verb_schema(name: str) -> Mapping[str, Any]:
    schema: Mapping[str, Any] = validator_for(VERB_BASE + name).schema
    return schema


# --------------------------------------------------------------------------- normalising


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def normalize(data: Any) -> list[dict[str, Any]]:
    """`[{"verb": "say", ...} | {"say": {...}}, ...]` → `[{"verb": "say", ...}, ...]`."""
    if not isinstance(data, list):
        raise VerbError(f"a verb list must be a JSON array, got {_kind(data)}")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(data):
        n = i + 1
        if not isinstance(item, dict):
            raise VerbError(f"verb #{n}: expected a JSON object, got {_kind(item)}", index=i)
        if "verb" in item:
            name = item["verb"]
            if not isinstance(name, str):
                raise VerbError(
                    f"verb #{n}: 'verb' must be a string, got {_kind(name)}",
                    index=i,
                    attribute="verb",
                )
            out.append(dict(item))
            continue
        if len(item) == 1:
            name, attrs = next(iter(item.items()))
            if isinstance(attrs, dict):
                inner = attrs.get("verb", name)
                if inner != name:
                    raise VerbError(
                        f"verb #{n} '{name}': attribute 'verb' says {inner!r}",
                        index=i,
                        verb=name,
                        attribute="verb",
                    )
                out.append({**attrs, "verb": name})
                continue
        raise VerbError(
            f'verb #{n}: expected {{"verb": name, ...}} or {{name: {{...}}}}, '
            f"got an object with keys {sorted(item)}",
            index=i,
        )
    return out


# --------------------------------------------------------------------------- validating


def _dotted(path: Iterable[Any]) -> str:
    parts: list[str] = []
    for p in path:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts)


def _types_of(schemas: Any) -> list[str] | None:
    """The `type`s of a list of alternative subschemas, or None if any lacks one."""
    if not isinstance(schemas, list):
        return None
    types: list[str] = []
    for s in schemas:
        t = s.get("type") if isinstance(s, dict) else None
        if isinstance(t, str):
            types.append(t)
        elif isinstance(t, list) and all(isinstance(x, str) for x in t):
            types.extend(t)
        else:
            return None
    return types


def _join_or(items: Iterable[str]) -> str:
    seen: list[str] = []
    for it in items:
        if it == "integer" and "number" in seen:
            continue
        if it not in seen:
            seen.append(it)
    return " or ".join(seen)


def _describe(error: ValidationError, v: Draft202012Validator) -> tuple[str, str]:
    """(attribute path, what is wrong with it) for one jsonschema error."""
    path = list(error.absolute_path)
    attr = _dotted(path)
    kind = error.validator
    if kind == "required":
        inst = error.instance if isinstance(error.instance, dict) else {}
        missing = [k for k in error.validator_value if k not in inst] or ["?"]
        return _dotted([*path, missing[0]]), "is required"
    if kind == "type":
        expected = error.validator_value
        names = [expected] if isinstance(expected, str) else list(expected)
        return attr, f"has wrong type (expected {_join_or(names)})"
    if kind in ("oneOf", "anyOf"):
        branches = error.validator_value
        types = _types_of(branches)
        if types is not None:
            matching = [
                i
                for i, b in enumerate(branches)
                if any(v.is_type(error.instance, t) for t in _types_of([b]) or [])
            ]
            if not matching:
                return attr, f"has wrong type (expected {_join_or(types)})"
            inner = [
                e
                for e in error.context or []
                if e.relative_schema_path and e.relative_schema_path[0] in matching
            ]
            if inner:
                inner.sort(key=lambda e: -len(e.absolute_path))
                return _describe(inner[0], v)
        return attr, "has an invalid value"
    if kind == "additionalProperties":
        inst = error.instance if isinstance(error.instance, dict) else {}
        known = set(error.schema.get("properties", {})) if isinstance(error.schema, dict) else set()
        extra = [k for k in inst if k not in known] or ["?"]
        return _dotted([*path, extra[0]]), "is not a known attribute"
    if kind == "enum":
        allowed = ", ".join(json.dumps(x) for x in error.validator_value)
        return attr, f"must be one of {allowed}"
    if kind == "const":
        return attr, f"must be {json.dumps(error.validator_value)}"
    return attr, f"is invalid ({error.message})"


def _check_extras(i: int, name: str, verb: Mapping[str, Any]) -> None:
    """Rules confroom needs beyond the jambonz schemas (spec section 1)."""
    n = i + 1
    if name == "conference" and "record" in verb:
        path = verb["record"].get("path") if isinstance(verb["record"], dict) else None
        if "path" not in verb["record"]:
            raise VerbError(
                f"verb #{n} '{name}': attribute 'record.path' is required",
                index=i,
                verb=name,
                attribute="record.path",
            )
        if not isinstance(path, str):
            raise VerbError(
                f"verb #{n} '{name}': attribute 'record.path' has wrong type (expected string)",
                index=i,
                verb=name,
                attribute="record.path",
            )
    if name == "sip:decline":
        status = verb.get("status")
        if not (isinstance(status, int | float) and status == int(status)):
            raise VerbError(
                f"verb #{n} '{name}': attribute 'status' must be a whole number",
                index=i,
                verb=name,
                attribute="status",
            )
        if not 400 <= int(status) <= 699:
            raise VerbError(
                f"verb #{n} '{name}': attribute 'status' must be a SIP final status 400-699",
                index=i,
                verb=name,
                attribute="status",
            )


def validate(
    verbs: list[dict[str, Any]], allowed: Collection[str] | None = None
) -> list[dict[str, Any]]:
    """Check every (normalised) verb; raise VerbError for the first problem found.
    `allowed` restricts which verbs may appear (e.g. MEDIA_ONLY for waitHook lists)."""
    known = known_verbs()
    for i, verb in enumerate(verbs):
        n = i + 1
        name = verb.get("verb")
        if not isinstance(name, str):
            raise VerbError(f"verb #{n}: no verb name", index=i, attribute="verb")
        if name not in known:
            raise VerbError(f"verb #{n} '{name}': unknown verb", index=i, verb=name)
        if name not in SUPPORTED:
            raise VerbError(f"verb #{n} '{name}' is not supported by confroom", index=i, verb=name)
        if allowed is not None and name not in allowed:
            raise VerbError(
                f"verb #{n} '{name}' is not allowed here (allowed: {', '.join(sorted(allowed))})",
                index=i,
                verb=name,
            )
        schema = verb_schema(name)
        if schema.get("additionalProperties") is not True:
            props = schema.get("properties", {})
            for key in verb:
                if key not in props:
                    raise VerbError(
                        f"verb #{n} '{name}': unknown attribute '{key}'",
                        index=i,
                        verb=name,
                        attribute=key,
                    )
        v = validator_for(VERB_BASE + name)
        errors = sorted(v.iter_errors(verb), key=lambda e: list(map(str, e.absolute_path)))
        if errors:
            attr, what = _describe(errors[0], v)
            if what == "is not a known attribute":
                msg = f"verb #{n} '{name}': unknown attribute '{attr}'"
            elif attr:
                msg = f"verb #{n} '{name}': attribute '{attr}' {what}"
            else:
                msg = f"verb #{n} '{name}': {what}"
            raise VerbError(msg, index=i, verb=name, attribute=attr or None)
        _check_extras(i, name, verb)
    return verbs


def parse_verb_list(data: Any, allowed: Collection[str] | None = None) -> list[dict[str, Any]]:
    """normalize + validate."""
    return validate(normalize(data), allowed)
