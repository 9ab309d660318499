"""What each rule has not judged yet: the `SiteData.fresh` of the next evaluation.

The detection loop remembers when each rule last judged each device. A later evaluation then
knows, per (rule, device), the earliest device time whose verdict may have changed: the
device's earliest new data (ingest announces it with each commit), or the time of that last
judgement (what only the passing of time changes: a batch settling, a spell growing long
enough), whichever is earlier. Detectors with a horizon judge from there back only as far as
their episodes reach, instead of their whole lookback (docs/scaling.md, "Detectors").

Nothing here is durable: after a restart the first evaluation of each pair judges the whole
lookback, and so does every evaluation of a pair not yet judged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from weijian.alerts.models import Detector, SiteData

Pair = tuple[str, str]  # (rule id, device id)


def judged_pairs(site: SiteData, detectors: Sequence[Detector]) -> set[Pair]:
    """The (rule, device) pairs an evaluation of the site judges: per-device rules the devices
    in focus, rules across devices every device of their kinds (when one in focus is)."""
    kinds = site.focus_kinds()
    pairs: set[Pair] = set()
    for detector in detectors:
        if not detector.device_kinds & kinds:
            continue
        judged = (
            site.judged(*detector.device_kinds)
            if detector.scope == "device"
            else site.of_kind(*detector.device_kinds)
        )
        pairs.update((detector.rule.id, d.device_id) for d in judged)
    return pairs


class Freshness:
    """When each (rule, device) pair was last judged, in memory."""

    def __init__(self) -> None:
        self._judged: dict[Pair, datetime] = {}

    def __len__(self) -> int:
        return len(self._judged)

    def pairs(self, site: SiteData, detectors: Sequence[Detector]) -> set[Pair]:
        return judged_pairs(site, detectors)

    def fresh(
        self, pairs: Iterable[Pair], new_data: Mapping[str, datetime | None]
    ) -> dict[Pair, datetime]:
        """For the pairs judged before: min(earliest new data of the device, last judgement).
        `new_data`: device → earliest device time of what arrived since (None: only presence)."""
        out: dict[Pair, datetime] = {}
        for pair in pairs:
            last = self._judged.get(pair)
            if last is None:
                continue
            new = new_data.get(pair[1])
            out[pair] = last if new is None else min(last, new)
        return out

    def mark(self, pairs: Iterable[Pair], now: datetime) -> None:
        """The pairs were judged as of `now` (their verdicts committed)."""
        for pair in pairs:
            self._judged[pair] = now

    def forget(self) -> None:
        """Judge everything over the whole lookback next time (a full scan)."""
        self._judged.clear()
