"""The one place where configured hooks are called.

Every value-or-callable trait of the spawners goes through :func:`resolve`. A
callable gets the spawner and then only those of the offered arguments that its
signature accepts, in order, so the documented forms ``hook(spawner)``,
``hook(spawner, user_options)`` and ``hook(spawner, **kwargs)`` all work. Results
that are awaitable are awaited; the result is then validated.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, NamedTuple

from tornado import web

from .errors import HookError

log = logging.getLogger(__name__)

Validator = Callable[[Any], Any]


class _Plan(NamedTuple):
    takes_spawner: bool
    n_positional: int  # how many offered arguments to pass positionally (-1: all)
    keywords: frozenset[str]  # offered names accepted by keyword
    any_keyword: bool  # **kwargs present
    required: tuple[str, ...]  # parameters we can never fill


_ALL = -1


def _make_plan(func: Callable, offered: tuple[str, ...]) -> _Plan:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        # builtins without a signature: pass everything positionally
        return _Plan(True, _ALL, frozenset(), False, ())
    positional = []
    keywords = set()
    any_keyword = False
    var_positional = False
    required = []
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional.append(p)
        elif p.kind is p.VAR_POSITIONAL:
            var_positional = True
        elif p.kind is p.KEYWORD_ONLY:
            if p.name in offered:
                keywords.add(p.name)
            elif p.default is p.empty:
                required.append(p.name)
        elif p.kind is p.VAR_KEYWORD:
            any_keyword = True
    takes_spawner = bool(positional) or var_positional
    rest = positional[1:]
    if var_positional:
        n = _ALL
    else:
        n = min(len(rest), len(offered))
        for p in rest[n:]:
            if p.default is p.empty:
                if p.name in offered and p.kind is p.POSITIONAL_OR_KEYWORD:
                    keywords.add(p.name)
                else:
                    required.append(p.name)
        # offered names beyond the positional ones may still match by keyword
        for p in rest[n:]:
            if p.kind is p.POSITIONAL_OR_KEYWORD and p.name in offered:
                keywords.add(p.name)
    return _Plan(takes_spawner, n, frozenset(keywords), any_keyword, tuple(required))


@lru_cache(maxsize=1024)
def _cached_plan(func: Callable, offered: tuple[str, ...]) -> _Plan:
    return _make_plan(func, offered)


def _plan(func: Callable, offered: tuple[str, ...]) -> _Plan:
    try:
        return _cached_plan(func, offered)
    except TypeError:  # unhashable callable object
        return _make_plan(func, offered)


def call_args(
    func: Callable, spawner: Any, kwargs: Mapping[str, Any]
) -> tuple[tuple, dict[str, Any]]:
    """Work out how to call a hook.

    :param func: the configured callable
    :param spawner: passed first, when ``func`` takes any positional argument
    :param kwargs: the offered arguments in their documented order
    :returns: ``(args, kwargs)`` for the call
    :raises TypeError: when ``func`` requires an argument that is not offered
    """
    names = tuple(kwargs)
    plan = _plan(func, names)
    if plan.required:
        raise TypeError(
            "requires argument(s) {} but is given only: spawner{}".format(
                ", ".join(plan.required), "".join(", " + n for n in names)
            )
        )
    values = list(kwargs.values())
    n = len(values) if plan.n_positional == _ALL else plan.n_positional
    args = ((spawner,) if plan.takes_spawner else ()) + tuple(values[:n])
    passed = set(names[:n])
    kw = {
        k: v
        for k, v in kwargs.items()
        if k not in passed and (plan.any_keyword or k in plan.keywords)
    }
    return args, kw


def _log_name(spawner: Any) -> str:
    try:
        return spawner._log_name
    except Exception:  # a spawner without a user, e.g. in a unit test
        return "spawner"


async def resolve(
    spawner: Any,
    name: str,
    *,
    value: Any = inspect.Parameter.empty,
    check: Validator | None = None,
    show_errors: bool = False,
    **kwargs: Any,
) -> Any:
    """Resolve a value-or-callable trait.

    :param spawner: the spawner the trait belongs to
    :param name: the trait name; it names the hook in errors and logs
    :param value: the configured value; default ``getattr(spawner, name)``
    :param check: validator applied to the result; it returns the value to use or
        raises :class:`TypeError`/:class:`ValueError` with a short reason
    :param show_errors: show the hook's own exception text to the user (for hooks
        whose job is to refuse, such as ``check_allowed``)
    :param kwargs: the arguments offered to a callable, in their documented order
    :returns: the validated result
    :raises HookError: when the hook raised, returned the wrong type or cannot be
        called with the offered arguments. :class:`tornado.web.HTTPError` raised by
        a hook (including JupyterHub's ``SpawnException``) passes through unchanged.
    """
    if value is inspect.Parameter.empty:
        value = getattr(spawner, name)
    if callable(value):
        try:
            args, kw = call_args(value, spawner, kwargs)
        except TypeError as e:
            raise HookError(
                name,
                f"The server could not be started: the '{name}' hook is misconfigured.",
                log_message=f"{_log_name(spawner)}: hook {name} {e}",
            ) from None
        try:
            result = value(*args, **kw)
            if inspect.isawaitable(result):
                result = await result
        except web.HTTPError:
            raise
        except Exception as e:
            spawner.log.exception(
                "%s: hook %s raised %s", _log_name(spawner), name, type(e).__name__
            )
            if show_errors:
                message = str(e) or type(e).__name__
            else:
                message = (
                    f"The server could not be started: the '{name}' hook failed "
                    f"({type(e).__name__}). Details are in the JupyterHub log."
                )
            raise HookError(name, message, log_message=f"hook {name} raised {e!r}") from e
    else:
        result = value
    if check is None:
        return result
    try:
        return check(result)
    except (TypeError, ValueError) as e:
        spawner.log.error("%s: hook %s returned an invalid value: %s", _log_name(spawner), name, e)
        raise HookError(
            name,
            f"The server could not be started: the '{name}' setting is invalid ({e}).",
        ) from None


# validators ---------------------------------------------------------------


def _type_name(v: Any) -> str:
    return type(v).__name__


def is_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise TypeError(f"expected a bool, got {_type_name(v)}")


def is_dict(v: Any) -> dict:
    if v is None:
        return {}
    if isinstance(v, Mapping):
        return dict(v)
    raise TypeError(f"expected a dict, got {_type_name(v)}")


def is_str_dict(v: Any) -> dict[str, str]:
    d = is_dict(v)
    for k, val in d.items():
        if not isinstance(k, str) or not isinstance(val, str):
            raise TypeError(f"expected a dict of strings, got {_type_name(k)}: {_type_name(val)}")
    return d


def is_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    raise TypeError(f"expected a string, got {_type_name(v)}")


def is_nonempty_str(v: Any) -> str:
    if isinstance(v, str) and v.strip():
        return v.strip()
    raise TypeError(
        f"expected a non-empty string, got {v!r}"
        if isinstance(v, str)
        else f"expected a non-empty string, got {_type_name(v)}"
    )


def is_optional_str(v: Any) -> str | None:
    return None if v is None else is_str(v)


def is_port(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise TypeError(f"expected a port number, got {_type_name(v)}")
    try:
        port = int(v)
    except ValueError:
        raise ValueError(f"expected a port number, got {v!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return port


def is_nonneg_number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, got {_type_name(v)}")
    if v < 0:
        raise ValueError(f"expected a number >= 0, got {v}")
    return float(v)


def is_str_list(v: Any) -> list[str]:
    if isinstance(v, list | tuple) and all(isinstance(s, str) for s in v):
        return list(v)
    raise TypeError(f"expected a list of strings, got {_type_name(v)}")
