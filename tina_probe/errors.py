class TinaError(Exception):
    """A user-facing error: one line naming the file/thing and what is wrong."""
