"""The one error a user of ``s3files bench`` sees: ``BenchError``, printed as one line, exit status 1.

Why a class of its own: setup failures (unreachable endpoint, missing bucket, a mount that will not start)
end the run with a sentence that says what to fix, while a failed *measurement* is recorded in the results
and the run carries on. Keeping them apart makes that choice explicit wherever an error is raised.
"""

from __future__ import annotations

import errno


class BenchError(Exception):
    """A reason the benchmark cannot run, worded for the user (no traceback is shown)."""


def describe(exc: BaseException) -> str:
    """One line for a failed measurement, errno name first when there is one: 'EROFS: Read-only ...'."""
    number = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and isinstance(number, int) and number in errno.errorcode:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{errno.errorcode[number]}: {exc.strerror}{where}"
    if isinstance(exc, MeasurementError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class MeasurementError(Exception):
    """One measurement failed for a reason already worded (e.g. by a child process); the run goes on."""
