"""Command-line options generated from the config dataclasses, so that a setting is declared once.

A dataclass field becomes a ``quala`` option when its metadata has a ``"help"`` text; the option is named after
the field's path (``latency.repeats`` -> ``--latency-repeats``) unless its metadata names a ``"flag"`` (e.g.
``"--budget"``, or ``"--latency/--no-latency"`` for a switch). Every generated option defaults to None ("not
given"), so :func:`quala.config.resolve` layers them over the dataclass defaults and a YAML file. Lists of
strings repeat the option (``--train-file A --train-file B``); lists of numbers are written ``0.5,0.7``. A number
marked ``as_text`` is taken as text and converted here, so that a value that is no number reaches the dataclass,
whose check says what is wrong in one line (click's own error would be a multi-line usage message).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer


@dataclasses.dataclass(frozen=True)
class ConfigOption:
    """One generated option: the field's path in the config, its parameter name and its typer declaration;
    ``number``: the type its text converts to (``as_text`` options only)."""

    path: tuple[str, ...]
    name: str
    annotation: Any
    number: type | None = None


def _base(hint: Any) -> Any:
    """``T`` of ``T | None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _option_type(hint: Any) -> Any:
    base = _base(hint)
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        return list[str] if item is str else str  # numbers: "0.5,0.7", split by quala.config
    return base


def _default_text(f: dataclasses.Field) -> str | bool:
    """The dataclass default as --help shows it (what applies when neither the flag nor --config sets it)."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return False
    if value is None or value == "" or value == []:
        return False
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def config_options(cls: type, prefix: tuple[str, ...] = ()) -> list[ConfigOption]:
    """The options of every field of ``cls`` (and of its nested dataclasses) that has a help text."""
    options = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path, hint = (*prefix, f.name), hints[f.name]
        if dataclasses.is_dataclass(hint):
            options += config_options(hint, path)
            continue
        if "help" not in f.metadata:
            continue
        flag = f.metadata.get("flag") or "--" + "-".join(path).replace("_", "-")
        kind = _option_type(hint)
        if kind is bool and "/" not in flag and f.metadata.get("switch", True):
            flag = f"{flag}/--no-{flag.removeprefix('--')}"
        number = kind if f.metadata.get("as_text") else None
        option = typer.Option(
            flag, help=f.metadata["help"], show_default=_default_text(f), metavar=f.metadata.get("metavar")
        )
        options.append(ConfigOption(path, "_".join(path), Annotated[(str if number else kind) | None, option], number))
    return options


def _number(kind: type, text: str) -> Any:
    """``text`` as a ``kind`` where it parses; else the text itself, for the dataclass to reject."""
    try:
        return kind(text)
    except ValueError:
        return text


def overrides(options: list[ConfigOption], values: dict[str, Any]) -> dict[str, Any]:
    """The nested override dict of the options given on the command line (None and empty lists: not given)."""
    out: dict[str, Any] = {}
    for option in options:
        value = values.get(option.name)
        if value is None or value == []:
            continue
        if option.number is not None:
            value = _number(option.number, value)
        node = out
        for key in option.path[:-1]:
            node = node.setdefault(key, {})
        node[option.path[-1]] = value
    return out


def with_config_options(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command ``fn(own options..., overrides: dict)``: typer sees ``fn``'s own options followed by
    one option per field of ``cls`` (see :func:`config_options`); ``fn`` gets those given as ``overrides``."""
    options = config_options(cls)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "overrides"]
        names = [p.name for p in own] + [o.name for o in options]
        if len(set(names)) != len(names):
            raise RuntimeError(f"{fn.__name__}: a generated option shadows one of its own: {names}")

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            generated = {o.name: kwargs.pop(o.name, None) for o in options}
            return fn(**kwargs, overrides=overrides(options, generated))

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        params += [
            inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=o.annotation)
            for o in options
        ]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return command

    return decorate
