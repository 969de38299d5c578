"""Errors that name the file, row and field at fault."""

from __future__ import annotations


class DistSrecError(Exception):
    """Base class: every error the library raises on bad input."""


class DataError(DistSrecError):
    """Bad input data. The message names the file, and the row and field where known."""

    def __init__(
        self, message: str, *, path: object = None, row: int | None = None, field: str | None = None
    ):
        where = []
        if path is not None:
            where.append(f"file {path}")
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.path, self.row, self.field = path, row, field


class ConfigError(DistSrecError, ValueError):
    """A config value is out of range or inconsistent with another."""


class CheckpointError(DistSrecError):
    """A checkpoint is missing, corrupt, or does not match the catalog/model it is used with."""


class TrainingError(DistSrecError):
    """Training cannot go on correctly: a non-finite loss, gradient or validation score."""


class OutputBusyError(DistSrecError):
    """Another run is writing the same output directory."""
