"""Where every file's parts start and end, and S3's limits on parts.

Owns: ``PartLayout`` and the multipart limits. Why one fixed layout for every file: an edit then touches
only its own parts (the rest is copied inside S3), a streaming writer can send finished parts before it
knows the final size, and a part sent before a crash is still the same part after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from s3files.errors import TooLarge

MIN_PART = 5 * 1024 * 1024  # S3's minimum part size (all parts but the last)
MAX_PART = 5 * 1024**3  # S3's maximum part size
MAX_PARTS = 10_000
MAX_OBJECT = 5 * 1024**4  # S3's largest object: no file of the mount may grow past it (EFBIG)
TIER_PARTS = 1_000  # parts per size tier: each tier's parts are twice the size of the previous tier's


@dataclass(frozen=True)
class PartLayout:
    """``TIER_PARTS`` parts of ``base`` bytes, then 1,000 of twice that, and so on. Files up to ~8 TB (S3
    allows 5 TiB) fit in 10,000 parts, and the layout never depends on the final size."""

    base: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if not MIN_PART <= self.base <= MAX_PART >> 9:
            raise ValueError(f"part size must be between 5 MiB and {MAX_PART >> 29} MiB")

    def span(self, index: int) -> tuple[int, int]:
        """Bytes ``[start, end)`` of part ``index`` (0-based; part number ``index + 1``)."""
        tier, within = divmod(index, TIER_PARTS)
        size = self.base << tier
        start = TIER_PARTS * self.base * ((1 << tier) - 1) + within * size
        return start, start + size

    def index(self, offset: int) -> int:
        """The part holding byte ``offset``."""
        for tier in range(MAX_PARTS // TIER_PARTS):
            tier_end = TIER_PARTS * self.base * ((1 << (tier + 1)) - 1)
            if offset < tier_end:
                tier_start = TIER_PARTS * self.base * ((1 << tier) - 1)
                return tier * TIER_PARTS + (offset - tier_start) // (self.base << tier)
        raise TooLarge(f"offset {offset} is beyond the largest object S3 can store")

    def count(self, size: int) -> int:
        """How many parts an object of ``size`` bytes has (at least one)."""
        return self.index(size - 1) + 1 if size > 0 else 1

    def overlapping(self, start: int, end: int) -> range:
        """Indices of the parts that bytes ``[start, end)`` touch."""
        if end <= start:
            return range(0)
        return range(self.index(start), self.index(end - 1) + 1)
