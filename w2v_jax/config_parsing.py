"""Strict config -> frozen dataclass parsing: one policy for every config section.

    cfg = dataclass_from_dict(ToyLMConfig, config.model, where="config.model", ignore=("name",))

Keys that are neither fields of the dataclass nor listed in ``ignore`` (keys the section holds
for someone else, e.g. the builder ``name`` or the init ``seed``) are an error naming them, so a
typo in an override never passes silently. Lists become tuples (ConfigDict/JSON round trips).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence


def dataclass_from_dict(cls: type, values: Mapping[str, Any] | Any, *, where: str,
                        ignore: Sequence[str] = (), base: Any = None) -> Any:
    """``cls(**fields)`` from ``values`` (a dict or ConfigDict); with ``base`` (an instance of
    ``cls``) the given fields replace those of ``base``. ValueError naming unknown keys."""
    d = dict(values.to_dict() if hasattr(values, "to_dict") else values)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names - set(ignore))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(names)}"
                         + (f" (and {sorted(ignore)})" if ignore else ""))
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
    return dataclasses.replace(base, **fields) if base is not None else cls(**fields)
