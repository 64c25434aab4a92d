"""User-facing errors: the CLI prints these as one message and exits non-zero, no traceback."""


class AelightError(Exception):
    """A mistake in the user's input or environment (data, paths, config values)."""


class DataError(AelightError):
    """Dataset files are missing, unreadable or malformed."""


class NonFiniteLossError(AelightError):
    """Training produced a NaN or infinite loss."""


class ConfigError(AelightError, ValueError):
    """A config value that parses but cannot work (mismatched sizes, a non-positive std...)."""
