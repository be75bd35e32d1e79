"""The run spec's field types, checked before any range check: YAML gives ints, floats, bools and strings
whose Python types overlap (a bool is an int; `.inf` and `.nan` are floats)."""

from __future__ import annotations

import math
from dataclasses import fields

from suite.errors import UserError


def _type_ok(value, annotation: str) -> bool:
    allowed = {
        "str": (str,),
        "int": (int,),
        "float": (int, float),
        "bool": (bool,),
    }
    if value is None:
        return "None" in annotation
    if annotation == "int | str":
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    if annotation.startswith("tuple"):
        return isinstance(value, (tuple, list)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
    for name, types in allowed.items():
        if annotation.startswith(name) and isinstance(value, types):
            # bool is an int in Python; a YAML `yes` must not pass for a number (or a number for a flag).
            return name == "bool" or not isinstance(value, bool)
    return False


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float (YAML reads 1e400 as inf, but 10**400 as int)
        return False


def check_field_types(spec) -> None:
    """Every field of a `RunSpec` against its annotation, and every float field finite; a one-line error."""
    for f in fields(spec):
        value = getattr(spec, f.name)
        if not _type_ok(value, str(f.type)):
            raise UserError(f"{f.name} must be {f.type}, got {value!r} ({type(value).__name__})")
        # YAML's .inf and .nan are floats and pass the type check; the range checks below would let inf
        # through (lr > 0, epsilon ≥ 0) and word nan's refusal as a range error. Every float field, generically.
        if str(f.type).startswith("float") and value is not None and not _finite(value):
            accepted = "a finite number" + (" or null" if "None" in str(f.type) else "")
            raise UserError(f"{f.name}={value!r} is not a finite number; accepted: {accepted}")
