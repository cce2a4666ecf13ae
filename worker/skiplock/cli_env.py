"""Options from the environment for the ``skiplock`` command.

Every option of every command can also be set as a variable, looked up when that command runs:

- ``SKIPLOCK_<NAME>``: ``NAME`` is the option's destination in capitals (``--concurrency`` is
  ``SKIPLOCK_CONCURRENCY``, ``worker --queue`` is ``SKIPLOCK_QUEUES``, ``--lease`` is
  ``SKIPLOCK_LEASE_SECONDS``; ``skiplock COMMAND --help`` names each one);
- ``SKIPLOCK_<COMMAND>_<NAME>`` for one command only, which wins over the plain name
  (``SKIPLOCK_UI_PORT``, ``SKIPLOCK_OPERATOR_METRICS_PORT``). The actions of ``jobs``, ``schedule``
  and ``limits`` are one-off changes, so they read only these (``SKIPLOCK_JOBS_LIST_LIMIT``): a
  worker pod's ``SKIPLOCK_CONCURRENCY`` never turns into a ``limits set`` concurrency limit.

A flag given on the command line wins over any variable. A value goes through the flag's own
conversion and checks; list options take commas (``SKIPLOCK_QUEUES=a,b``) and switches take
1/0, true/false, yes/no or on/off. An empty variable counts as unset. A bad value is a usage
error naming the variable (exit 2), reported only for the command that would use it.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

PREFIX = "SKIPLOCK_"
NESTED_SCOPE_ONLY = 2
"""Commands this deep (``jobs list``, ``limits set``...) read only their own scoped variables."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _upper(name: str) -> str:
    return name.upper().replace("-", "_")


class _EnvError(Exception):
    pass


class _FromEnv:
    """A default taken from a variable, boxed so that argparse neither converts it a second time
    (it re-runs ``type`` on string defaults) nor mistakes it for a value given as a flag."""

    def __init__(self, variable: str, value: Any, error: str | None = None) -> None:
        self.variable, self.value, self.error = variable, value, error


class _Append(argparse._AppendAction):
    """``append`` whose first flag replaces a default (from the environment) instead of adding to it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if isinstance(getattr(namespace, self.dest, None), _FromEnv):
            setattr(namespace, self.dest, None)
        super().__call__(parser, namespace, values, option_string)


class _Extend(argparse._ExtendAction):
    """``extend`` whose first flag replaces a default (from the environment) instead of adding to it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if isinstance(getattr(namespace, self.dest, None), _FromEnv):
            setattr(namespace, self.dest, None)
        super().__call__(parser, namespace, values, option_string)


class ListAction(_Extend):
    """A list option that takes its values either way: ``--types a b`` or ``--types a,b`` (or both,
    repeated). Its ``type`` (``list_of``) splits the commas; the lists are flattened here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("nargs", "+")
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        super().__call__(parser, namespace, [item for group in values for item in group], option_string)


def list_of(convert: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """The ``type`` of a ``ListAction`` option: ``a,b`` to ``[convert(a), convert(b)]``."""
    def split(text: str) -> list[Any]:
        items = [convert(t.strip()) for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{text!r} names no value")
        return items
    split.__name__ = getattr(convert, "__name__", "value")
    split.choices = getattr(convert, "choices", None)  # type: ignore[attr-defined]
    return split


_VALUE_ACTIONS = (argparse._StoreAction, argparse._StoreConstAction, argparse._AppendAction,
                  argparse.BooleanOptionalAction)


class EnvParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose options default to ``SKIPLOCK_*`` variables (see the module doc).

    ``env_scope`` is the command path (``("jobs", "list")``), set by ``configure_env``;
    ``env_aliases`` adds further variables for a destination, tried last (``DATABASE_URL``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", "append", _Append)
        self.register("action", "extend", _Extend)
        self.register("action", "list", ListAction)
        self.env_scope: tuple[str, ...] = ()
        self.env_aliases: dict[str, tuple[str, ...]] = {}

    # -- names ---------------------------------------------------------------------------------

    def env_names(self, action: argparse.Action) -> tuple[str, ...]:
        """The variables that can set ``action``, in the order they are tried."""
        if (not action.option_strings or not isinstance(action, _VALUE_ACTIONS)
                or action.default is argparse.SUPPRESS or action.dest is argparse.SUPPRESS
                or isinstance(action, argparse._AppendConstAction)):
            return ()  # positionals, --help/--version, and the copies of the shared options
        dest = _upper(action.dest)
        names: list[str] = []
        if self.env_scope:
            names.append(PREFIX + "_".join(_upper(part) for part in (*self.env_scope, dest)))
        if len(self.env_scope) < NESTED_SCOPE_ONLY:
            names.append(PREFIX + dest)
        names += self.env_aliases.get(action.dest, ())
        return tuple(names)

    # -- values --------------------------------------------------------------------------------

    def _one(self, action: argparse.Action, variable: str, text: str) -> Any:
        convert: Callable[[str], Any] = self._registry_get("type", action.type, action.type)
        try:
            value = convert(text)
        except argparse.ArgumentTypeError as exc:
            raise _EnvError(f"{variable}: {exc}") from None
        except (TypeError, ValueError):
            kind = getattr(action.type, "__name__", "")
            raise _EnvError(f"{variable}: invalid {kind + ' ' if kind else ''}value {text!r}") from None
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(repr(c) for c in action.choices)
            raise _EnvError(f"{variable}: invalid choice {text!r} (choose from {choices})")
        return value

    def env_value(self, action: argparse.Action, variable: str, text: str) -> Any:
        """``text`` (the variable's value) converted and checked as the flag's value would be."""
        if isinstance(action, (argparse._StoreConstAction, argparse.BooleanOptionalAction)):
            word = text.strip().lower()
            if word not in _TRUE | _FALSE:
                raise _EnvError(f"{variable}: {text!r} is not a switch value (use 1/0, true/false, yes/no, on/off)")
            if isinstance(action, argparse.BooleanOptionalAction):
                return word in _TRUE
            return action.const if word in _TRUE else action.default
        listed = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*") or (
            isinstance(action.nargs, int) and action.nargs != 1)
        if not listed:
            return self._one(action, variable, text)
        items = [self._one(action, variable, t.strip()) for t in text.split(",") if t.strip()]
        if isinstance(action, ListAction):
            items = [item for group in items for item in group]
        if not items and action.nargs == "+":
            raise _EnvError(f"{variable}: give at least one comma-separated value")
        if isinstance(action.nargs, int) and len(items) != action.nargs:
            raise _EnvError(f"{variable}: give {action.nargs} comma-separated values")
        if isinstance(action, argparse._AppendAction) and not isinstance(action, argparse._ExtendAction) \
                and action.nargs not in (None, "?"):
            return [items]  # append of lists: the variable is one occurrence
        return items

    def _from_environment(self, action: argparse.Action) -> _FromEnv | None:
        for variable in self.env_names(action):
            text = os.environ.get(variable, "")
            if text != "":
                try:
                    return _FromEnv(variable, self.env_value(action, variable, text))
                except _EnvError as exc:
                    return _FromEnv(variable, None, str(exc))
        return None

    # -- parsing -------------------------------------------------------------------------------

    def _groups_of(self, action: argparse.Action) -> list[Any]:
        return [g for g in self._mutually_exclusive_groups if action in g._group_actions]

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        saved: list[tuple[object, str, Any]] = []
        boxes: dict[argparse.Action, _FromEnv] = {}
        try:
            for action in self._actions:
                box = self._from_environment(action)
                if box is None:
                    continue
                boxes[action] = box
                saved.append((action, "default", action.default))
                action.default = box
                if action.required:  # the variable provides it
                    saved.append((action, "required", True))
                    action.required = False
                for group in self._groups_of(action):
                    if group.required:
                        saved.append((group, "required", True))
                        group.required = False
            parsed, extras = super().parse_known_args(args, namespace)
        finally:
            for obj, attr, old in reversed(saved):
                setattr(obj, attr, old)

        def from_flag(action: argparse.Action) -> bool:
            value = getattr(parsed, action.dest, None)
            return not isinstance(value, _FromEnv) and (action in boxes or value is not action.default)

        flagged = {a for g in self._mutually_exclusive_groups for a in g._group_actions if from_flag(a)}
        sources: dict[str, str] = {}
        problems: list[str] = []
        for action, box in boxes.items():
            if not isinstance(getattr(parsed, action.dest, None), _FromEnv):
                continue  # a flag set it: flags win
            if any(a in flagged for g in self._groups_of(action) for a in g._group_actions if a is not action):
                setattr(parsed, action.dest, action.default)  # --every given beats SKIPLOCK_..._CRON
                continue
            if box.error is not None:
                problems.append(box.error)
            setattr(parsed, action.dest, box.value)
            sources[action.dest] = box.variable
        if problems:
            self.error("; ".join(problems))
        parsed.env_sources = {**getattr(parsed, "env_sources", {}), **sources}
        return parsed, extras


def configure_env(parser: EnvParser, scope: tuple[str, ...] = ()) -> None:
    """Give every parser of the tree its command path and name the variables in each option's help."""
    parser.env_scope = scope
    seen: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action._name_parser_map.items():
                if id(sub) not in seen and isinstance(sub, EnvParser):
                    seen.add(id(sub))
                    configure_env(sub, (*scope, name))
            continue
        names = list(parser.env_names(action))
        if names and action.help is not argparse.SUPPRESS:
            if 0 < len(scope) < NESTED_SCOPE_ONLY:  # SKIPLOCK_[UI_]PORT: the scoped and the plain name
                plain = names.pop(1)
                names[0] = f"{PREFIX}[{_upper(scope[0])}_]{plain[len(PREFIX):]}"
            note = "env " + " or ".join(names)
            action.help = f"{action.help} ({note})" if action.help else note


# -- variables the library reads itself --------------------------------------------------------

def _whole(low: int) -> Callable[[str], str | None]:
    def check(text: str) -> str | None:
        try:
            value = int(text)
        except ValueError:
            return f"{text!r} is not an integer"
        return None if value >= low else f"{value} must be at least {low}"
    return check


def _seconds(positive: bool) -> Callable[[str], str | None]:
    def check(text: str) -> str | None:
        try:
            value = float(text)
        except ValueError:
            return f"{text!r} is not a number of seconds"
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            return f"{text!r} must be a finite number of seconds{' above 0' if positive else ''}"
        return None
    return check


LIBRARY_VARIABLES: dict[str, Callable[[str], str | None]] = {
    "SKIPLOCK_MAX_PAYLOAD_BYTES": _whole(1),
    "SKIPLOCK_CONNECT_TIMEOUT": _whole(0),
    "SKIPLOCK_RECONNECT_TIMEOUT": _seconds(positive=False),
    "SKIPLOCK_POOL_TIMEOUT": _seconds(positive=True),
}
"""Settings with no flag, read by the library wherever it runs; the command checks them up front."""


def check_library_env() -> str | None:
    """A one-line complaint about the first bad library variable, or None."""
    for variable, check in LIBRARY_VARIABLES.items():
        text = os.environ.get(variable)
        if text is not None and (problem := check(text)):
            return f"{variable}: {problem}"
    return None
