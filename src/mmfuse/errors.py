"""One exception family. The CLI prints these as one line and exits 2 (no traceback)."""


class MmfuseError(Exception):
    """A problem the user can fix: bad config, bad data, missing file."""


class ConfigError(MmfuseError):
    """A config field is wrong; the message names the field and the allowed values."""


class DataError(MmfuseError):
    """A table, row or media file is wrong; the message names the file, row and field."""


class ArtifactError(MmfuseError):
    """A saved model directory is missing a file or does not match this version."""
