"""YAML -> ``${ENV}`` interpolation -> validated models, with errors naming the key."""

from __future__ import annotations

import os
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from bridge.config.models import (
    BridgeConfig,
)
from bridge.config_fields import (
    _ENV_REF,
    _Problems,
    _report,
)
from bridge.errors import ConfigError


def interpolate(node: Any, env: dict[str, str], path: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree.

    Raises ConfigError naming every key whose variable is unset (all of them, not the
    first only). A variable set to "" counts as unset.
    """
    missing: list[str] = []
    resolved = _interpolate(node, env, path, missing)
    if missing:
        raise ConfigError(_report(missing))
    return resolved


def _interpolate(node: Any, env: dict[str, str], path: str, missing: list[str]) -> Any:
    if isinstance(node, dict):
        return {
            k: _interpolate(v, env, f"{path}.{k}" if path else str(k), missing)
            for k, v in node.items()
        }
    if isinstance(node, list):
        # "topics.0", the way validation errors name list items too.
        return [_interpolate(v, env, f"{path}.{i}", missing) for i, v in enumerate(node)]
    if isinstance(node, str):

        def repl(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env and env[name] != "":
                return env[name]
            if default is not None:
                return default
            missing.append(f"{path}: environment variable {name} is not set")
            return ""

        return _ENV_REF.sub(repl, node)
    return node


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = [str(p) for p in err["loc"]]
        error = err.get("ctx", {}).get("error")
        if isinstance(error, _Problems):
            lines += [f"{'.'.join([*loc, key])}: {message}" for key, message in error.problems]
            continue
        # A validator's own text, without pydantic's "Value error, " in front.
        message = str(error) if err["type"] == "value_error" else err["msg"]
        lines.append(f"{'.'.join(loc) or '(top level)'}: {message}")
    return _report(lines)


def parse(data: Any, env: dict[str, str] | None = None) -> BridgeConfig:
    """Validate a parsed YAML document. Raises ConfigError naming every bad key."""
    if not isinstance(data, dict):
        raise ConfigError("invalid configuration: the top level must be a mapping")
    resolved = interpolate(data, dict(os.environ) if env is None else env)
    try:
        return BridgeConfig.model_validate(resolved)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping.

    PyYAML keeps the last one silently, so a pasted second ``app_secret`` or ``topics``
    would win without a word. Keys brought in by a ``<<`` merge may still be overridden.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[tuple[str, str], yaml.Mark] = {}
        start, end = node.start_mark.index, node.end_mark.index
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            if not start <= key_node.start_mark.index <= end:
                # Brought in by a << merge (PyYAML may have flattened this node already,
                # when an alias of it was merged elsewhere): an override, not a duplicate.
                continue
            first = seen.setdefault((key_node.tag, key_node.value), key_node.start_mark)
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"found a duplicate key, first given at line {first.line + 1}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep)


def _without_quoted_text(text: str) -> str:
    # PyYAML quotes what it found: token names ('<stream end>') and single characters
    # are kept, anything longer (a tag, an anchor or alias name) may be file content.
    def keep_or_drop(match: re.Match[str]) -> str:
        inner = match.group(0)[1:-1]
        if len(inner) <= 2 or re.fullmatch(r"<[\w ]+>", inner):
            return match.group(0)
        return "(text left out)"

    return re.sub(r"'[^']*'|\"[^\"]*\"", keep_or_drop, text)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, from PyYAML's error: never the content of the line."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        text = f"not valid YAML{where}: {_without_quoted_text(exc.problem or 'syntax error')}"
        if exc.context:
            context = _without_quoted_text(exc.context)
            cmark = exc.context_mark
            if cmark is not None and cmark is not mark:
                context += f" at line {cmark.line + 1}, column {cmark.column + 1}"
            text += f" ({context})"
        if re.search(r"\b(tag|alias|anchor)\b", exc.problem or ""):
            text += "; quote values that start with ! & or *"
        return text
    if isinstance(exc, yaml.reader.ReaderError):
        return f"not valid YAML at character {exc.position}: {exc.reason}"
    return f"not valid YAML ({type(exc).__name__})"


def load(path: Path, env: dict[str, str] | None = None) -> BridgeConfig:
    """Read and validate a YAML config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {_yaml_problem(exc)}") from None
    return parse(data, env)
