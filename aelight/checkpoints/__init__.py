"""Checkpoint files: written atomically and loaded weights-only with a message naming what is wrong
(``io``), and the allow-list of the class paths a checkpoint may name, checked before anything is
imported (``trust``)."""
