"""Every option of a mount, as frozen dataclasses validated once and shared by the CLI and the library.

Owns: parsing ``s3://bucket/prefix`` sources, defaults, and the one place an option's meaning is written
down. Must not touch the network or the file system beyond reading the mount point's state.
"""

from __future__ import annotations

import enum
import math
import os
import urllib.parse
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from s3files.errors import MountError

MIB = 1024 * 1024
MAX_CONNECTIONS = 1024  # concurrent S3 connections; each is a socket and a slot in the pools
MAX_ATTEMPTS = 20  # attempts of one S3 request: more only makes an outage's calls hang longer
MAX_REQUEST_TIMEOUT = 3600.0  # seconds one attempt may wait
MAX_ID = 2**32 - 2  # the largest uid/gid: (uid_t)-1 means "no change" to chown(2)
ON_RECOVERY = ("upload", "keep", "discard", "upload-held")
HOLD = ("keep", "discard")
LISTING_ATTRIBUTES = ("true", "fast")
DURABILITY = ("machine", "daemon")


class Consistency(enum.Enum):
    """How fresh what a mount shows is, and what close() promises (docs/SEMANTICS.md, Consistency modes).

    STRICT trusts nothing about S3 from memory; CLOSE_TO_OPEN trusts attributes and listings for the TTL
    but revalidates every open; EVENTUAL trusts them for the TTL, open included, and uploads closed files
    after ``writeback_delay``.
    """

    STRICT = "strict"
    CLOSE_TO_OPEN = "close-to-open"
    EVENTUAL = "eventual"

    @property
    def default_ttl(self) -> float:
        """Seconds attributes and listings are trusted when ``--metadata-ttl`` is not given."""
        return _DEFAULT_TTL[self]


_DEFAULT_TTL = {Consistency.STRICT: 0.0, Consistency.CLOSE_TO_OPEN: 1.0, Consistency.EVENTUAL: 60.0}
CONSISTENCY_MODES = tuple(mode.value for mode in Consistency)


@dataclass(frozen=True)
class Source:
    """Where the mount's files live: a bucket and a key prefix ('' or ending in '/')."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, text: str) -> Source:
        """Parse ``s3://bucket[/prefix[/]]``; a non-empty prefix always gets a trailing '/'."""
        if not text.startswith("s3://"):
            raise MountError(f"source must look like s3://bucket[/prefix], got {text!r}")
        rest = text[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise MountError(f"source {text!r} names no bucket; use s3://bucket[/prefix]")
        prefix = prefix.strip("/")
        if "//" in prefix:
            raise MountError(f"source prefix {prefix!r} has an empty path segment")
        return cls(bucket=bucket, prefix=prefix + "/" if prefix else "")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class StoreOptions:
    """How to reach S3. None means: the standard AWS chain decides (env, profile, instance role)."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    max_connections: int = 32
    # Every S3 request (store/retry.py): attempts counting the first, and seconds one attempt may wait for
    # the endpoint (to connect, at most 5 s of it, and for each read of its answer).
    max_attempts: int = 4
    request_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.endpoint_url is not None:
            url = urllib.parse.urlsplit(self.endpoint_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise MountError(
                    f"--endpoint-url must be an http:// or https:// URL with a host, got {self.endpoint_url!r}"
                )
        for name in ("region", "profile"):
            if getattr(self, name) == "":
                raise MountError(f"--{name} must not be empty (leave it out for the AWS chain's)")
        if not 1 <= self.max_connections <= MAX_CONNECTIONS:
            raise MountError(
                f"--max-connections must be a whole number from 1 to {MAX_CONNECTIONS}, got {self.max_connections}"
            )
        if isinstance(self.max_attempts, bool) or not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise MountError(f"--max-attempts must be a whole number from 1 to {MAX_ATTEMPTS}, got {self.max_attempts}")
        if not (math.isfinite(self.request_timeout) and 0 < self.request_timeout <= MAX_REQUEST_TIMEOUT):
            raise MountError(
                f"--request-timeout must be a number of seconds above 0 and at most {MAX_REQUEST_TIMEOUT:g},"
                f" got {self.request_timeout}"
            )


@dataclass(frozen=True)
class ReadOptions:
    """The read path. Parts are fetched concurrently; the window grows while a reader stays sequential.

    ``first_part`` is small because it alone sets time to first byte; later parts are ``part_size``.
    ``max_window`` bounds the memory one sequential reader holds.
    """

    first_part: int = 1 * MIB
    part_size: int = 8 * MIB
    max_window: int = 64 * MIB
    read_ahead_kb: int = 1024  # the kernel's read-ahead for the mount: sets FUSE read sizes (1 MiB)

    def __post_init__(self) -> None:
        if not (0 < self.first_part <= self.part_size <= self.max_window):
            raise MountError("read sizes must satisfy 0 < first_part <= part_size <= max_window")


@dataclass(frozen=True)
class MountOptions:
    """Everything that shapes one mount."""

    source: Source
    mountpoint: Path
    store: StoreOptions = field(default_factory=StoreOptions)
    read: ReadOptions = field(default_factory=ReadOptions)
    read_only: bool = False
    # Every open bypasses the kernel's page cache (FUSE direct I/O): a read is copied once, from the
    # read-ahead straight into the reader's buffer, instead of into the page cache and from there again.
    # The price: nothing is cached between opens, each read() is a request to the daemon (small reads are
    # slow). Shared maps work where the kernel allows them (6.6+, fuse/dirops.py asks), else ENODEV.
    direct_io: bool = False
    # Extended attributes (user.*, core/xattrs.py). The kernel asks a FUSE file system for
    # security.capability before every write() once it answers getxattr at all: one more round trip
    # per write call (small writes through a mount take up to twice as long). Off, the mount answers
    # ENOSYS once and the kernel never asks again (s3fs-fuse's default, its use_xattr option).
    xattrs: bool = True
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    file_mode: int = 0o644
    dir_mode: int = 0o755
    allow_other: bool = False
    # What a listing's entries show (core/superblock.py): "true", each object's own x-amz-meta-* (a HEAD per
    # file version this mount's cache folder does not know yet, and per folder marker per metadata_ttl);
    # "fast", the mount's defaults and LastModified until a file is looked up or opened (no HEAD per file:
    # for data-lake folders where attributes do not matter). "fast" may not share the mount with other users.
    listing_attributes: str = "true"
    consistency: Consistency = Consistency.CLOSE_TO_OPEN
    # Seconds the kernel and our caches may trust attributes and listings. None (the default) takes the
    # consistency mode's (Consistency.default_ttl); __post_init__ resolves it, so after construction it is
    # always a float. Hence dataclasses.replace(opts, consistency=...) keeps the old TTL: pass metadata_ttl=None.
    metadata_ttl: float | None = None
    # Eventual mode only: seconds a closed file waits in the local cache before it is uploaded, so a file
    # rewritten or appended within the delay is uploaded once.
    writeback_delay: float = 5.0
    # What a close acknowledged in the cache folder (eventual mode's close, records of files waiting for
    # upload; core/records.py) survives: "machine", a power loss or kernel crash too (the cache disk is
    # synced before the close returns: fdatasync, 2-3 per close); "daemon", the daemon dying (kill -9, OOM):
    # nothing is synced, the kernel's page cache holds the bytes and writes them out on its own, so a
    # crash of the machine may lose closes of its last ~30 s (vm.dirty_expire_centisecs).
    durability: str = "machine"
    cache_dir: Path | None = None
    cache_size: int | None = None  # bytes the cache may hold on disk (None: as much as the disk has)
    upload_part_size: int = 8 * MIB  # the first 1,000 parts; later parts double every 1,000 (5 TiB fits)
    upload_concurrency: int = 8  # parts uploaded, copied or fetched at once, over all files
    # Prometheus metrics (s3files/metrics.py) over HTTP at metrics_address:metrics_port; None: not served.
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    # What the mount does with files a stopped or dead daemon left in the cache folder (core/recovery.py):
    # upload those a close or fsync acknowledged (the rest is kept), keep everything, or discard everything.
    on_recovery: str = "upload"
    # ``s3files exec --publish on-success`` (s3files/job.py): uploads are held back from the start (nothing
    # uploaded, core/writeback.py ``WriteBack.held``) until the control socket releases them; a stop while
    # still held keeps ("keep") or discards ("discard") what waits. None: no hold. Needs eventual mode.
    hold: str | None = None

    def __post_init__(self) -> None:
        for name in ("uid", "gid"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_ID:
                raise MountError(f"--{name} must be a whole number from 0 to {MAX_ID}, got {value}")
        for name in ("file_mode", "dir_mode"):
            value = getattr(self, name)
            if not 0 <= value <= 0o7777:
                raise MountError(f"--{name.replace('_', '-')} must be an octal mode like 644, got {value:o}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise MountError(f"--metrics-port must be a port number from 0 to 65535, got {self.metrics_port}")
        if self.durability not in DURABILITY:
            raise MountError(f"--durability must be machine or daemon, got {self.durability!r}")
        if self.listing_attributes not in LISTING_ATTRIBUTES:
            raise MountError(f"--listing-attributes must be true or fast, got {self.listing_attributes!r}")
        if self.listing_attributes == "fast" and self.allow_other:
            raise MountError(
                "--listing-attributes=fast cannot be used with --allow-other: other users' access would be"
                " checked against guessed attributes"
            )
        if isinstance(self.consistency, str):  # the library passes the flag's text
            try:
                object.__setattr__(self, "consistency", Consistency(self.consistency))
            except ValueError:
                raise MountError(
                    f"--consistency must be one of {', '.join(CONSISTENCY_MODES)}, got {self.consistency!r}"
                ) from None
        if self.metadata_ttl is None:
            object.__setattr__(self, "metadata_ttl", self.consistency.default_ttl)
        for name in ("metadata_ttl", "writeback_delay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise MountError(f"--{name.replace('_', '-')} must be a finite number of seconds >= 0, got {value}")
        if not 5 * MIB <= self.upload_part_size <= 5 * 1024 * MIB // 512:
            raise MountError(
                f"--upload-part-size must be between 5 and 10 MiB (parts double every 1,000; S3 allows 5 GiB),"
                f" got {self.upload_part_size} bytes"
            )
        if self.upload_concurrency < 1:
            raise MountError(f"--upload-concurrency must be a whole number >= 1, got {self.upload_concurrency}")
        if self.on_recovery not in ON_RECOVERY:
            raise MountError(f"--on-recovery must be one of {', '.join(ON_RECOVERY)}, got {self.on_recovery!r}")
        if self.hold is not None and self.hold not in HOLD:
            raise MountError(f"--hold must be one of {', '.join(HOLD)}, got {self.hold!r}")
        if self.hold is not None and self.consistency is not Consistency.EVENTUAL:
            raise MountError("holding uploads back (--publish on-success) needs --consistency eventual")
        if self.cache_size is not None and self.cache_size < MIB:
            raise MountError(f"--cache-size must be at least 1 MiB, got {self.cache_size} bytes")


def default_of(options: type, name: str) -> Any:
    """The default of field ``name`` of an options dataclass: front ends (argparse) take their defaults
    here, so each default is written once, in the dataclass."""
    for f in fields(options):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            raise ValueError(f"{options.__name__}.{name} has no default")
    raise AttributeError(f"{options.__name__} has no option {name!r}")


def parse_mode(text: str) -> int:
    """Parse an octal mode such as '644' or '0o755' (argparse type)."""
    try:
        value = int(text, 8)
    except ValueError:
        raise MountError(f"not an octal mode: {text!r} (use e.g. 644)") from None
    if not 0 <= value <= 0o7777:
        raise MountError(f"mode out of range: {text!r}")
    return value


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Parse a byte count such as '512M', '20G' or '1048576' (binary units; argparse type)."""
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = cleaned[-1:] if cleaned[-1:] in _UNITS else ""  # cleaned may be "" (and "" is a unit)
    number = cleaned[: len(cleaned) - len(unit)]
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        raise MountError(f"not a size: {text!r} (use e.g. 512M or 20G)") from None
    if not 0 < value < 1 << 60:
        raise MountError(f"size out of range: {text!r}")
    return int(value)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/s3files, else /var/cache/s3files for root and ~/.cache/s3files for others."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "s3files"
    if os.geteuid() == 0:
        return Path("/var/cache/s3files")
    return Path.home() / ".cache" / "s3files"
