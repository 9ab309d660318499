"""Detection split over several processes: each owns the sites whose id hashes to its shard.

A site's rules read across its devices (a release needs its line's cabinets, a silent site
mutes its devices' offline alerts), so the unit of partition is the site, not the device:
every device of a site is judged by the same process, and no two processes ever evaluate the
same site, so alerts, their history and the tasks they open have one writer per site.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("a detection shard count must be at least 1")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} is outside 0..{self.count - 1}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`I/N`, as given on the command line (`weijian detect --shard 1/4`)."""
        index, sep, count = text.partition("/")
        if not (sep and index.strip().isdigit() and count.strip().isdigit()):
            raise ValueError(f"expected a shard as I/N (0 <= I < N), got {text!r}")
        return cls(int(index), int(count))

    def owns(self, site_id: str) -> bool:
        """Whether this shard judges the site (a stable hash: every process agrees)."""
        return self.count == 1 or zlib.crc32(site_id.encode()) % self.count == self.index

    def select(self, site_ids: Iterable[str]) -> list[str]:
        """The sites of this shard, in the order given."""
        return [site_id for site_id in site_ids if self.owns(site_id)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


EVERY_SITE = Shard(0, 1)
