class TinaError(Exception):
    """A user-facing error: one line naming the file/thing and what is wrong."""


class CheckpointError(TinaError):
    """A model or adapter that cannot be loaded or applied: an eval sweep skips that checkpoint and goes on."""
