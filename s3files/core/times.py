"""File times as integer nanoseconds, and their s3fs-compatible text form in ``x-amz-meta-*``.

Owns: how a time is written to and read from user metadata (``mtime``, ``ctime``, ``atime``) and how an
S3 LastModified (float seconds) becomes nanoseconds. Must not know about inodes or I/O.

Why integers: a float of seconds since 1970 has about 0.2 microseconds of precision, so ``.2`` read back as
``.199999988``; ``touch`` and ``make`` compare nanoseconds. Every time in the core is an ``int`` of
nanoseconds since the epoch, exactly what ``st_mtime_ns`` carries.

Text form (as s3fs-fuse writes a ``struct timespec``): whole seconds, and when there are nanoseconds a dot
and exactly nine digits (``1700000000`` or ``1700000000.200000000``); s3fs-fuse reads the digits after the
dot as ``tv_nsec``, so it reads ours exactly, and for times after 1970 the same text read as a decimal
number (rclone, a float parser) is the same time. Reading:
- nine digits after the dot: s3fs's ``tv_sec.tv_nsec``, exact (also for times before 1970, where
  ``-2.500000000`` is ``tv_sec=-2, tv_nsec=5e8``, i.e. -1.5 s, as s3fs means it);
- any other number (``1700000000.5``, ``1.7e9``, an older writer's float): its decimal value, rounded to
  the nanosecond;
- garbage, NaN, infinities and times no ``st_mtime_ns`` (int64) can carry: not a time (None).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

NS = 1_000_000_000
_TIMESPEC = re.compile(r"([+-]?\d+)\.(\d{9})")
_INT64 = 2**63


def format_time(ns: int) -> str:
    """``ns`` as s3fs-fuse writes a timespec: ``sec`` or ``sec.nnnnnnnnn`` (tv_nsec in [0, 1e9))."""
    sec, nsec = divmod(ns, NS)
    return str(sec) if nsec == 0 else f"{sec}.{nsec:09d}"


def parse_time(raw: str) -> int | None:
    """The time ``raw`` says, in nanoseconds (see the module docstring); None if it is not one."""
    text = raw.strip()
    match = _TIMESPEC.fullmatch(text)
    if match:
        ns = int(match[1]) * NS + int(match[2])
    else:
        try:
            value = Decimal(text)
        except InvalidOperation:
            return None
        if not value.is_finite() or abs(value) >= _INT64 // NS:
            return None
        ns = round(value * NS)
    return ns if -_INT64 <= ns < _INT64 else None


def ns_of_seconds(seconds: float) -> int:
    """Float seconds (an S3 LastModified) as nanoseconds, whole seconds first: ``seconds * 1e9`` would
    lose the fraction's last digits to the float's 53 bits."""
    whole = math.floor(seconds)
    return whole * NS + round((seconds - whole) * NS)


def seconds_of_ns(ns: int) -> float:
    """Nanoseconds as float seconds (for names and logs, never for a time that is stored or shown)."""
    return ns / NS
