"""Load objects named on the command line as ``package.module:callable`` or ``file.py:callable``.

Every failure becomes a :class:`click.BadParameter` (exit code 2) that names the option, the spec
and what went wrong, so a typo never ends in a traceback.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import click

SPEC_FORMS = "package.module:callable or path/to/file.py:callable"


def resolve(spec: str, option: str) -> Any:
    """The object ``spec`` names (not called)."""
    target, attribute = _split(spec, option)
    module = _import(target, spec, option)
    obj: Any = module
    walked: list[str] = []
    for part in attribute.split("."):
        if not hasattr(obj, part):
            where = ".".join([target, *walked]) if walked else target
            raise click.BadParameter(
                f"{spec!r}: {where!r} has no attribute {part!r}" + _suggestions(obj, part),
                param_hint=option,
            )
        obj = getattr(obj, part)
        walked.append(part)
    return obj


def resolve_callable(spec: str, option: str) -> Any:
    """The callable ``spec`` names (not called)."""
    obj = resolve(spec, option)
    if not callable(obj):
        raise click.BadParameter(
            f"{spec!r} is a {type(obj).__name__}, not a callable; name a function or class "
            f"({SPEC_FORMS})",
            param_hint=option,
        )
    return obj


def call_factory(
    spec: str, option: str, kwargs: dict[str, Any] | None = None, kwargs_option: str = ""
) -> Any:
    """Call the factory ``spec`` names (with ``kwargs``, given by ``kwargs_option``) and return
    what it returns."""
    factory = resolve_callable(spec, option)
    kwargs = kwargs or {}
    try:
        return factory(**kwargs)
    except Exception as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        hint = ""
        if isinstance(exc, TypeError) and kwargs:
            hint = (
                f". Check the names and values of {kwargs_option} against the factory's "
                f"parameters{_signature(factory)}"
            )
        elif isinstance(exc, TypeError):
            hint = ". The factory is called without arguments: give every parameter a default" + (
                f", or pass them with {kwargs_option} name=value,..." if kwargs_option else ""
            )
        raise click.BadParameter(
            f"calling {spec}({shown}) raised {_describe(exc)}{hint}", param_hint=option
        ) from exc


def _signature(factory: Any) -> str:
    try:
        return f" {inspect.signature(factory)}"
    except (TypeError, ValueError):
        return ""


# -- helpers --------------------------------------------------------------------------------------
def _split(spec: str, option: str) -> tuple[str, str]:
    if ":" not in spec:
        raise click.BadParameter(
            f"{spec!r} has no ':'; write {SPEC_FORMS}, e.g. mypackage.models:make_model",
            param_hint=option,
        )
    target, _, attribute = spec.rpartition(":")
    if not target or not attribute:
        missing = "module or file" if not target else "callable"
        raise click.BadParameter(
            f"{spec!r} names no {missing}; write {SPEC_FORMS}", param_hint=option
        )
    return target, attribute


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _import(target: str, spec: str, option: str) -> ModuleType:
    if _is_path(target):
        return _import_file(Path(target), spec, option)
    # Console scripts do not put the working directory on sys.path; `python -m` does.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            raise click.BadParameter(
                f"{spec!r}: module {target!r} not found (no module named {exc.name!r}); is the "
                "package installed in this environment, or the module in the working directory? "
                "A file can also be named by its path: path/to/file.py:callable",
                param_hint=option,
            ) from exc
        raise click.BadParameter(
            f"{spec!r}: importing {target!r} failed: {_describe(exc)}", param_hint=option
        ) from exc
    except Exception as exc:
        raise click.BadParameter(
            f"{spec!r}: importing {target!r} raised {_describe(exc)}", param_hint=option
        ) from exc


def _import_file(path: Path, spec: str, option: str) -> ModuleType:
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise click.BadParameter(f"{spec!r}: file {str(path)!r} {what}", param_hint=option)
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    name = f"_lossvista_user_{_identifier(resolved.stem)}_{digest}"
    if name in sys.modules:  # --model and --data often name the same file: import it once
        return sys.modules[name]
    folder = str(resolved.parent)
    if folder not in sys.path:  # so the file can import its neighbours
        sys.path.insert(0, folder)
    module_spec = importlib.util.spec_from_file_location(name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise click.BadParameter(
            f"{spec!r}: {str(path)!r} cannot be imported as Python source", param_hint=option
        )
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickle look the module up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise click.BadParameter(
            f"{spec!r}: running {str(path)!r} raised {_describe(exc)}", param_hint=option
        ) from exc
    return module


def _identifier(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def _describe(exc: BaseException) -> str:
    """``Type: message (at file:line)``: where in the user's code it was raised, if it was."""
    here = str(Path(__file__).parent)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(here)]
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    message = str(exc).strip() or "(no message)"
    return f"{type(exc).__name__}: {message}{where}"


def _suggestions(obj: Any, wanted: str) -> str:
    names = (
        [
            n
            for n, value in vars(obj).items()
            if not n.startswith("_")
            and callable(value)
            and (not inspect.ismodule(obj) or getattr(value, "__module__", None) == obj.__name__)
        ]
        if hasattr(obj, "__dict__")
        else []
    )
    if not names:
        return ""
    close = difflib.get_close_matches(wanted, names, n=3, cutoff=0.6)
    shown = (close or names)[:10]
    if close:
        return f"; did you mean {' or '.join(repr(n) for n in shown)}?"
    return f"; callables defined there: {', '.join(shown)}"
