"""Launcher plumbing: numeric flags with checked ranges, and user errors as one line (exit 2).

Every launcher (``experiments/*.py``, ``data_gen/*.py``) is written as::

    from w2v_jax import cli
    _N = cli.integer("num_scenes", 10, "Scenes to render.", lo=1)    # range checked at parse
    _F = cli.real("eval_fraction", 0.1, "Held-out share.", lo=0, hi=1)  # NaN / inf refused

    def main(argv):
        with cli.checking():        # validation phase: ValueError / OSError -> cli.UserError
            plan = validate(...)    # every flag and input, before anything is loaded or deleted
        run(plan)                   # real work: exceptions keep their traceback

    if __name__ == "__main__":
        cli.run(main)

``cli.run`` prints a ``UserError`` or a flag-parsing error as ONE line on stderr
(``PROG: error: MESSAGE``) and exits with status 2; any other exception propagates with its
traceback. Imports nothing else of the package.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Any, Callable, Iterator

from absl import app, flags


class UserError(Exception):
    """Bad user input (a flag, a path, a config value): reported as one line, exit status 2."""


@contextlib.contextmanager
def checking() -> Iterator[None]:
    """Inside: a ValueError or OSError (input validation, missing / unreadable input files) is
    re-raised as ``UserError`` with the same message."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, OSError) as e:
        raise UserError(str(e)) from e


class _FiniteFloatParser(flags.FloatParser):
    """absl's bounded float parser that also refuses NaN and +-inf."""

    def __init__(self, lower_bound: float | None = None, upper_bound: float | None = None):
        super().__init__(lower_bound, upper_bound)
        self.syntactic_help = "a finite " + self.syntactic_help.removeprefix("a ")

    def is_outside_bounds(self, val: float) -> bool:
        return not math.isfinite(val) or super().is_outside_bounds(val)


def _caller_module() -> str:
    """The module defining a flag through this file (so ``--help`` lists it with the launcher's
    flags), spelled as absl does: ``sys.argv[0]`` for ``__main__``."""
    name = sys._getframe(2).f_globals.get("__name__", "")
    return sys.argv[0] if name == "__main__" and sys.argv else name


def integer(name: str, default: int | None, help: str, *, lo: int, hi: int | None = None,
            **kwargs: Any) -> flags.FlagHolder:
    """An integer flag in ``[lo, hi]`` (``hi=None``: no upper bound); checked at parse time."""
    return flags.DEFINE_integer(name, default, help, lower_bound=lo, upper_bound=hi,
                                module_name=_caller_module(), **kwargs)


def real(name: str, default: float | None, help: str, *, lo: float | None = None,
         hi: float | None = None, **kwargs: Any) -> flags.FlagHolder:
    """A finite float flag in ``[lo, hi]`` (None: unbounded on that side); NaN / inf refused."""
    if lo is None and hi is None:
        raise ValueError(f"flag --{name}: give lo and/or hi (every numeric flag has a range)")
    parser = _FiniteFloatParser(lo, hi)
    holder = flags.DEFINE(parser, name, default, help, serializer=flags.ArgumentSerializer(),
                          module_name=_caller_module(), **kwargs)
    if default is not None and parser.is_outside_bounds(float(default)):
        raise ValueError(f"flag --{name}: default {default} is not {parser.syntactic_help}")
    return holder


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(" ".join(str(e).split()))


def _fail(message: str) -> None:
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "w2v_jax"
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.exit(2)


def run(main: Callable[[list[str]], Any]) -> None:
    """``absl.app.run(main)`` with flag errors and ``UserError`` as one line and exit 2."""

    def wrapped(argv: list[str]) -> Any:
        try:
            return main(argv)
        except UserError as e:
            _fail(" ".join(str(e).split()))

    app.run(wrapped, flags_parser=_parse_flags)
