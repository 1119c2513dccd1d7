"""The README's configuration table lists every key the config model accepts, with its
default and limits as the model has them: a key added, removed or changed without the
README fails here. On a failure the expected rows are printed, ready to paste."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from bridge.config import BridgeConfig

README = Path(__file__).resolve().parents[2] / "README.md"
_ROW = re.compile(r"^\| `([a-z0-9_.]+)` \| ([^|]*) \| ([^|]*) \|")
_KIB, _MIB = 1024, 1024 * 1024


def _models(annotation: Any) -> list[type[BaseModel]]:
    args = typing.get_args(annotation) or (annotation,)
    return [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]


def _number(value: float, name: str) -> str:
    if name.endswith("_bytes") and isinstance(value, int) and value > 0:
        if value % _MIB == 0:
            return f"{value // _MIB} MiB"
        if value % _KIB == 0:
            return f"{value // _KIB} KiB"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _default(name: str, info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return _number(value, name)
    if isinstance(value, dict | list):
        return f"`{json.dumps(value, separators=(',', ':'))}`"
    return f"`{value}`"


def _limits(name: str, info: FieldInfo) -> str:
    parts: list[str] = []
    annotation = info.annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        parts.append("one of " + ", ".join(f"`{a}`" for a in args))
    if annotation is SecretStr or SecretStr in args:
        parts.append("secret")
    symbols = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    for meta in info.metadata:
        for attr, symbol in symbols.items():
            bound = getattr(meta, attr, None)
            if isinstance(meta, annotated_types.BaseMetadata) and bound is not None:
                parts.append(f"{symbol} {_number(bound, name)}")
    return "; ".join(parts) or "—"


def model_rows(
    model: type[BaseModel] = BridgeConfig, prefix: str = ""
) -> dict[str, tuple[str, str]]:
    """Every dotted key the model accepts -> (default, limits), as the README shows them."""
    rows: dict[str, tuple[str, str]] = {}
    for name, info in model.model_fields.items():
        key = f"{prefix}{name}"
        nested = _models(info.annotation)
        if nested:
            for sub in nested:
                rows.update(model_rows(sub, f"{key}."))
            continue
        rows[key] = (_default(name, info), _limits(name, info))
    return rows


def readme_rows() -> dict[str, tuple[str, str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        match = _ROW.match(line)
        if match:
            key, default, limits = match.groups()
            assert key not in rows, f"{key} is listed twice"
            rows[key] = (default.strip(), limits.strip())
    return rows


def test_the_readme_lists_every_key_with_its_default_and_limits() -> None:
    want, have = model_rows(), readme_rows()
    expected = "\n".join(f"| `{k}` | {d} | {lim} | |" for k, (d, lim) in want.items())
    assert set(have) == set(want), (
        f"missing from README: {sorted(set(want) - set(have))}; "
        f"not in the model: {sorted(set(have) - set(want))}\nexpected rows:\n{expected}"
    )
    wrong = {k: (have[k], want[k]) for k in want if have[k] != want[k]}
    assert not wrong, f"README differs (have, want): {wrong}\nexpected rows:\n{expected}"


def test_the_walk_finds_nested_and_inherited_keys() -> None:
    rows = model_rows()
    assert rows["source.tmc.url"][0] == "`ws://mc.api.taobao.com/`"
    assert rows["sink.kafka.transactional_id"][0] == "required"
    assert "source.ons.name_server" in rows and "sink.rocketmq.name_server" in rows
    assert rows["http.port"][1] == "≥ 0; ≤ 65535"
