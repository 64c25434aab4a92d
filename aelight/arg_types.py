"""argparse types the commands share; plain Python, so a light command (aelight sweep) imports no torch."""

import argparse
from typing import Callable


def whole_number(minimum: int, unit: str = "") -> Callable[[str], int]:
    """argparse type: a whole number of at least ``minimum`` (of ``unit``, named in its messages)."""
    number, least = (f"whole number of {unit}", f"{minimum} {unit}") if unit else ("whole number", f"{minimum}")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {number}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
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
