"""Build a library config dataclass from plain params values, with strict types and a clear error.

``build_dataclass(StganConfig, values, "gan.stgan")`` refuses ``64.9`` or ``true`` for an int,
``"fast"`` for a float and unknown keys, naming ``gan.stgan.<key>``, the value and what is allowed,
so every library config is as strictly checked as the params blocks of ``dermagan.config``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, TypeVar, get_type_hints

from pydantic import TypeAdapter, ValidationError

from dermagan.errors import DermaganError

T = TypeVar("T")


@lru_cache(maxsize=None)
def _field_adapters(cls: type) -> dict[str, TypeAdapter]:
    return {name: TypeAdapter(hint) for name, hint in get_type_hints(cls).items()
            if name in getattr(cls, "__dataclass_fields__", {})}


def check_fields(cls: type, values: dict[str, Any], where: str) -> None:
    """Type-check the known fields of ``cls`` among ``values`` (a params block merged later), naming ``where``."""
    adapters = _field_adapters(cls)
    for key, value in values.items():
        if key in adapters:
            _check(adapters[key], key, value, where)


def _check(adapter: TypeAdapter, key: str, value: Any, where: str) -> Any:
    try:
        return adapter.validate_python(value, strict=True)
    except ValidationError as exc:
        msg = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise DermaganError(f"params: {where}.{key} = {value!r}: {msg}") from None


def build_dataclass(cls: type[T], values: dict[str, Any], where: str) -> T:
    """``cls(**values)`` with every field type-checked strictly (ints may stand for floats)."""
    adapters = _field_adapters(cls)
    unknown = sorted(set(values) - set(adapters))
    if unknown:
        raise DermaganError(f"params: unknown {where} key(s) {unknown}; known: {sorted(adapters)}")
    return cls(**{key: _check(adapters[key], key, value, where) for key, value in values.items()})
