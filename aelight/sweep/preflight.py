"""A sweep's options checked before any trial starts: each grid value and each end of a search
range (or choice) goes through the parser of the command its trials run, with the spec's config
and the other options at their first value, so a typo in an option's name or a value of the wrong
type is one line naming it, before any folder or study exists. The first worker does it before it
takes any trial, in a child of its warm forkserver (the one its trials are forked from, so the
check costs no import of its own); the sweep waits for its answer before it writes anything or
starts another worker. The sweep's own process imports neither torch nor Lightning."""

import contextlib
import io
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional

from aelight.sweep.spec import SweepSpec, encode
from aelight.sweep.trial import trial_commands
from aelight.sweep.trial_process import context


def checked_values(spec: SweepSpec) -> list[tuple[str, dict]]:
    """(what, params) for each value to check: the first grid point and search values, then each
    other grid value and each end of a search range (or choice) in turn."""
    ends = {
        key: [encode(v) for v in space["choices"]] if "choices" in space else [space["low"], space["high"]]
        for key, space in spec.search.items()
    }
    values = {**{key: [encode(v) for v in grid] for key, grid in spec.grid.items()}, **ends}
    first = {key: options[0] for key, options in values.items()}
    checks = [("the spec's options", first)] if not values else []
    for key, options in values.items():
        where = "grid" if key in spec.grid else "search"
        checks += [(f"{where}.{key}: {value!r}", {**first, key: value}) for value in options]
    return checks


def trial_checks(spec: SweepSpec, extra: list[str], scratch: Path) -> list:
    """(what, the trial's first command, the same without the sweep's command-line options) for
    each value of ``checked_values``."""
    seed = spec.seeds[0]
    return [
        (what, *(trial_commands(spec, {**params, "seed": seed}, seed, scratch, given)[0] for given in (extra, [])))
        for what, params in checked_values(spec)
    ]


COMMAND_LINE = "command line"  # a problem in the options given to ``aelight sweep`` itself


def problem(spec: SweepSpec, extra: list[str]) -> Optional[tuple[str, str]]:
    """(what, the parser's reason) for the first grid or search value (or sweep option) that the
    trials' command would refuse, or None; what is ``COMMAND_LINE`` when the value passes without
    the options given to ``aelight sweep`` and fails with them. The parsing runs in a child of this
    process's warm forkserver (``aelight.sweep.trial_process``), which the worker then forks its
    trials from."""
    with tempfile.TemporaryDirectory() as scratch:  # the trials' folders, never created
        checks = [(what, given.argv, bare.argv) for what, given, bare in trial_checks(spec, extra, Path(scratch))]
    with ProcessPoolExecutor(1, mp_context=context()) as pool:
        found = pool.submit(first_problem, checks).result()
    return tuple(found) if found else None


def message(spec: SweepSpec, found: tuple[str, str]) -> str:
    what, reason = found
    if what == COMMAND_LINE:
        return f"aelight sweep: an option given on its command line (applied to every trial): {reason}"
    return f"sweep spec {spec.path}: {what}: {reason}"


def first_problem(checks: list[tuple[str, list[str], list[str]]]) -> Optional[tuple[str, str]]:
    """In the child: the first (what, the parser's reason) among ``checks``' command lines."""
    for what, argv, bare in checks:
        reason = refusal(argv)
        if reason:
            return (COMMAND_LINE if bare != argv and not refusal(bare) else what), reason
    return None


def refusal(argv: list[str]) -> Optional[str]:
    """Why the trial command ``argv`` would be refused by its parser, or None."""
    from aelight.run.api import argument_problem

    command, *options = argv
    if command == "anomaly":  # its own options first; the others are each digit's fit options
        from aelight.apps.anomaly import parser

        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said):
                _, options = parser().parse_known_args(options)
        except SystemExit:
            return (said.getvalue().strip().splitlines() or ["refused by aelight anomaly"])[-1]
    if command in ("reduce", "features"):  # a baseline's trial: the application's own parser alone
        from aelight.apps import represent

        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said):
                represent.parser(command).parse_args(options)
        except SystemExit:
            return (said.getvalue().strip().splitlines() or [f"refused by aelight {command}"])[-1]
        return None
    return argument_problem([o for o in options if not o.startswith("--out=")])
