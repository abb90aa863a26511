"""What went wrong, in one line: for the reports that record a KPI's failure and go on."""


def describe_error(error: Exception) -> str:
    """The exception's type and the first line of its message."""
    return f"{type(error).__name__}: {error}".splitlines()[0]
