"""How the daemon's log looks: one line per record, as text or JSON, that nobody can forge.

Owns: the formatters (``OneLineFormatter``: text; ``JsonFormatter``: one JSON object per line for log
shippers, with the message's ``key=value`` fields such as ``op``, ``path``, ``errno`` also as fields), the
escaping of control characters, and the set-up of the daemon's handlers and levels (botocore stays at
WARNING whatever the level: at DEBUG it logs signed headers; its credential refreshes are silent, as
s3files.store.credentials reports refused credentials once). Must not decide what is logged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET_LOGGERS = ("botocore", "aiobotocore", "urllib3")
# botocore's refreshable credentials warn at every request that meets expired or unobtainable ones (with a
# traceback when the source failed); s3files.store.credentials says it once instead.
CREDENTIAL_LOGGERS = ("botocore.credentials", "aiobotocore.credentials")

#: ``key=value`` fields at the start of our messages (``op=upload path='a/b' errno=EIO: ...``): a value is
#: a quoted repr (keys and names are logged with %r) or a run of non-space characters.
_FIELD = re.compile(r"""(\w+)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s:,;]+)""")


def escape_controls(text: str) -> str:
    r"""``text`` with C0/C1 controls, DEL and Unicode line separators as ``\xNN`` / ``\uNNNN``."""
    return text.translate(_CONTROL_ESCAPES)


_CONTROL_ESCAPES = {
    c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}")
    for c in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
}


class OneLineFormatter(logging.Formatter):
    """Every log record is one line: control characters in its message (a key or a file name may hold a
    newline, and anyone who can write to the bucket chooses keys) are written as escapes, so nobody can
    forge a log line. A traceback after the message keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record and line: ``time`` (UTC, ISO 8601 with milliseconds), ``level``,
    ``logger``, ``message``, the message's leading ``key=value`` fields (``op``, ``path``, ``key``,
    ``errno``...; quoted values unquoted) and ``traceback`` when there is one. JSON escapes every control
    character, so a key cannot break a line here either."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        for name, value in _FIELD.findall(message.split(": ", 1)[0]):
            if name not in entry:
                entry[name] = _unquote(value)
        entry["message"] = message
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        try:
            return str(json.loads('"' + value[1:-1].replace('"', '\\"').replace("\\'", "'") + '"'))
        except ValueError:
            return value[1:-1]
    return value


def setup(level: str, log_file: Path | None, log_format: str = "text") -> None:
    """The daemon's log: to ``log_file`` (else stderr) at ``level``, as ``log_format`` lines."""
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else OneLineFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for noisy in CREDENTIAL_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
