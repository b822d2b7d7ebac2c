"""Domain errors. The CLI turns each into one line on stderr and exit code 1."""


class TtspoError(Exception):
    """Base class: a problem the user can fix, worded for them."""


class StoreError(TtspoError):
    """A table, version or tag that does not exist, or a name that is not allowed."""


class InputError(TtspoError):
    """Bad input files or records. `problems` lists (file_or_record, reason)."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None):
        self.message = message
        self.problems = problems or []
        if self.problems:
            lines = [message] + [f"  {where}: {why}" for where, why in self.problems]
            message = "\n".join(lines)
        super().__init__(message)

    def __reduce__(self):  # raised in a reader process, re-raised whole in the caller
        return (type(self), (self.message, self.problems))


class QueryError(TtspoError):
    """A SQL query that failed or is not allowed."""


class RecipeError(TtspoError):
    """A recipe whose output breaks the preference-set contract."""


class ModelError(TtspoError):
    """A model (scorer or policy) that cannot be loaded: missing file, missing extra,
    not a checkpoint, another architecture or size."""


class ConfigError(TtspoError):
    """A training config key, value or loss name that is not valid."""


class TrainingError(TtspoError):
    """A training run that cannot start or continue (another run's folder, a NaN loss)."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its class name if it has none):
    what a one-line error shows of a library's multi-line message."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:limit] if limit else line
