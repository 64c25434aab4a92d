"""How a sweep's options and values are shown to people (tables, progress lines, TensorBoard's
HParams sessions); results.csv keeps them whole."""


def shown_option(key: str) -> str:
    """An option without its ``init_args.``."""
    return key.replace("init_args.", "")


def shown_value(value) -> str:
    """A value; a search's floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
