"""What went wrong, in one line: for error messages, logs and the reports that record a KPI's
failure and go on."""

import sqlalchemy as sa


def first_line(error: Exception) -> str:
    """The first line of the error's message (a database error's own, without the SQL and the
    stack the library attached), or its type's name if it has none."""
    if isinstance(error, sa.exc.DBAPIError) and error.orig is not None:
        error = error.orig
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def describe_error(error: Exception) -> str:
    """The exception's type and the first line of its message."""
    return f"{type(error).__name__}: {first_line(error)}"
