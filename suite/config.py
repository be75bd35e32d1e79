"""Reading run configurations (YAML) into a `RunSpec`, with one-line errors for every mistake."""

from __future__ import annotations

from pathlib import Path

import yaml

from suite.errors import UserError, check
from suite.spec import RunSpec


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last one silently)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_yaml(path: str | Path, what: str = "config file") -> dict:
    p = Path(path)
    check(p.exists(), f"{what} {str(p)!r} does not exist")
    check(p.is_file(), f"{what} {str(p)!r} is a directory; accepted: a YAML file")
    try:
        data = yaml.load(p.read_text(), Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{what} {str(p)!r}{where}: YAML error: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {str(p)!r} cannot be read: {e}") from None
    check(isinstance(data, dict), f"{what} {str(p)!r} must be a YAML mapping of keys to values")
    return data


def parse_overrides(items: list[str]) -> dict:
    """`key=value` pairs from the command line; values are parsed as YAML scalars (`8`, `0.1`, `null`)."""
    out = {}
    for item in items:
        check("=" in item, f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def load_run_spec(path: str | Path, overrides: dict | None = None) -> RunSpec:
    data = {**load_yaml(path), **(overrides or {})}
    return RunSpec.from_dict(data, where=str(path))
