"""argparse types the commands share; plain Python, so a light command (aelight sweep) imports no torch."""

import argparse
from typing import Any, Callable, Optional


def number(
    kind: type = int,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    above: Optional[float] = None,
    unit: str = "",
) -> Callable[[str], Any]:
    """argparse type: a whole number (``kind=int``) or a number (``float``) within the bounds given
    (``above``: strictly), ``unit`` named in its messages."""
    what = ("whole number" if kind is int else "number") + (f" of {unit}" if unit else "")
    unit = f" {unit}" if unit else ""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
        if minimum is not None and maximum is not None and not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be between {minimum:g} and {maximum:g}{unit}, got {value}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}{unit}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum:g}{unit}, got {value}")
        if above is not None and not value > above:
            raise argparse.ArgumentTypeError(f"must be above {above:g}{unit}, got {value}")
        return value

    return parse


def true_or_false(text: str) -> bool:
    """argparse type: a switch spelt as ``aelight fit`` takes it (true/false, yes/no, 1/0)."""
    value = text.strip().lower()
    if value in ("true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def never_download(text: str) -> bool:
    """argparse type of ``--data.download`` for a command that reads a checkpoint's data: false only."""
    if true_or_false(text):
        raise argparse.ArgumentTypeError(
            "a command on a checkpoint reads the data its fit downloaded; download with `aelight fit ... "
            "--data.download true`"
        )
    return False
