"""One exception family. The CLI prints these as one line and exits 2 (no traceback)."""


class MmfuseError(Exception):
    """A problem the user can fix: bad config, bad data, missing file."""


class ConfigError(MmfuseError):
    """A config field is wrong; the message names the field and the allowed values."""


class DataError(MmfuseError):
    """A table, row or media file is wrong; the message names the file, row and field."""


class ArtifactError(MmfuseError):
    """A saved model directory is missing a file or does not match this version."""


class LabelProblem(ValueError):
    """A label cell a task cannot read (mmfuse.tasks); the manifest reports its row as bad."""


def brief(error: BaseException, limit: int = 200) -> str:
    """An exception as a short line for a message: its type and the start of its first line."""
    text = (str(error).strip().splitlines() or [""])[0]
    text = text if len(text) <= limit else text[:limit] + "…"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def quote_list(values: list[str], limit: int = 5) -> str:
    """The first `limit` values quoted, and how many more there are."""
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f", … ({len(values) - limit} more)" if len(values) > limit else "")
