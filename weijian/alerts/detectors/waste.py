"""Medical-waste scale events: storage time, weight reconciliation and missing bags.

All three rules read one ledger built from the scale's `bag_in` / `bag_out` events.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from weijian.alerts.detectors.common import DeviceDetector, iso, local_time
from weijian.alerts.models import DeviceData, Finding, SiteData
from weijian.alerts.models import Severity as Sev
from weijian.alerts.rules import rule
from weijian.devices.kinds import DeviceKind
from weijian.telemetry import Event

CATEGORY_ZH = {
    "infectious": "感染性",
    "sharps": "损伤性",
    "pathological": "病理性",
    "pharmaceutical": "药物性",
    "chemical": "化学性",
}
_SCALE = frozenset({DeviceKind.WASTE_SCALE})
# Waste rules look at bags stored up to days before, plus their hand-over.
_WASTE_LOOKBACK = timedelta(days=14)
# A bag weighed in this shortly before a hand-over may be weighed while the transporter is
# loading: it goes with the next hand-over, so leaving it out is not suspicious.
HANDOVER_CUTOFF = timedelta(minutes=5)


@dataclass(frozen=True)
class Handover:
    """A `bag_out`: bags handed to the transporter under one manifest."""

    ts: datetime
    episode: str
    bag_ids: tuple[str, ...]
    weight_kg: float | None
    # Sum of the bag_in weights of the listed bags that were in store, and the listed bags
    # whose weight is not known (not in store, or weighed in without a weight).
    expected_kg: float
    unknown: tuple[str, ...]
    categories: frozenset[str]


@dataclass
class Bag:
    """One stay of a bag in the store: weighed in, until handed over (if yet)."""

    bag_id: str
    in_at: datetime
    weight_kg: float | None
    category: str | None
    dept: str | None
    out_at: datetime | None = None
    # Hand-overs after the bag came in that took waste of its category but not the bag.
    skipped_by: list[Handover] = field(default_factory=list)

    def describe(self) -> str:
        parts = [CATEGORY_ZH.get(self.category or "", self.category or "")]
        if self.weight_kg is not None:
            parts.append(f"{self.weight_kg:g} kg")
        if self.dept:
            parts.append(self.dept)
        return f"医疗废物袋 {self.bag_id}（{'，'.join(p for p in parts if p)}）"


@dataclass(frozen=True)
class Ledger:
    bags: list[Bag]
    handovers: list[Handover]

    def in_store(self) -> list[Bag]:
        return [b for b in self.bags if b.out_at is None]

    def missing(self, now: datetime, grace: timedelta) -> list[Bag]:
        """Bags suspected lost: left out of a hand-over that took their kind of waste, and
        still not handed over `grace` after it."""
        return [b for b in self.in_store() if b.skipped_by and now - b.skipped_by[0].ts >= grace]


def ledger(events: Sequence[Event], now: datetime) -> Ledger:
    """Replay the scale's events up to `now`, in device-time order.

    A `bag_in` of a bag already in store is a re-weighing: it updates the weight but not the
    time it came in, so the bag is counted once. A `bag_in` of a bag handed over before starts
    a new stay. An identical repeated event (a resend) is ignored.
    """
    bags: list[Bag] = []
    stored: dict[str, Bag] = {}
    handovers: list[Handover] = []
    seen: set[tuple[str, datetime, str]] = set()
    for event in sorted(events, key=lambda e: (e.ts, e.seq or 0)):
        key = (event.type, event.ts, json.dumps(event.data, sort_keys=True, default=str))
        if event.ts > now or key in seen:
            continue
        seen.add(key)
        if event.type == "bag_in":
            _bag_in(event, stored, bags)
        elif event.type == "bag_out":
            handovers.append(_bag_out(event, stored))
    return Ledger(bags, handovers)


def _bag_in(event: Event, stored: dict[str, Bag], bags: list[Bag]) -> None:
    bag_id = str(event.data.get("bag_id", ""))
    weight = _number(event.data.get("weight_kg"))
    if bag_id in stored:
        bag = stored[bag_id]
        bag.weight_kg = weight if weight is not None else bag.weight_kg
        return
    bag = Bag(
        bag_id,
        event.ts,
        weight,
        _text(event.data.get("category")),
        _text(event.data.get("dept")),
    )
    stored[bag_id] = bag
    bags.append(bag)


def _bag_out(event: Event, stored: dict[str, Bag]) -> Handover:
    ids = tuple(dict.fromkeys(str(b) for b in event.data.get("bag_ids") or ()))
    taken = [stored.pop(b) for b in ids if b in stored]
    for bag in taken:
        bag.out_at = event.ts
    manifest = _text(event.data.get("manifest_no"))
    weighed = {b.bag_id for b in taken if b.weight_kg is not None}
    handover = Handover(
        ts=event.ts,
        episode=manifest or f"out@{iso(event.ts)}",
        bag_ids=ids,
        weight_kg=_number(event.data.get("weight_kg")),
        expected_kg=sum(b.weight_kg or 0.0 for b in taken),
        unknown=tuple(b for b in ids if b not in weighed),
        categories=frozenset(b.category for b in taken if b.category),
    )
    for bag in stored.values():
        same_kind = not handover.categories or bag.category in handover.categories
        if bag.in_at <= event.ts - HANDOVER_CUTOFF and (bag.category is None or same_kind):
            bag.skipped_by.append(handover)
    return handover


def _number(raw: object) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        return float(raw)
    except ValueError:
        return None


def _text(raw: object) -> str | None:
    return None if raw is None or raw == "" else str(raw)


def _hours(span: timedelta) -> float:
    return span.total_seconds() / 3600.0


def store_clear(
    rule_id: str, site: SiteData, device: DeviceData, *, book: Ledger, now: datetime, summary: str
) -> Finding | None:
    """Positive evidence for a store-state rule: a hand-over, and nothing in breach since."""
    if not book.handovers:
        return None
    last = book.handovers[-1]
    return Finding(
        rule=rule_id,
        site_id=site.site_id,
        device_id=device.device_id,
        state="clear",
        severity=Sev.WARNING,
        summary=summary,
        evidence_from=last.ts,
        evidence_to=now,
        episode=last.episode,
        details={"manifest": last.episode, "in_store": len(book.in_store())},
    )


class StorageOverdueDetector(DeviceDetector):
    """`waste.storage_overdue`: a bag not handed over after the warning age (36 h, warning) or
    beyond the limit (> 48 h, major); the limit itself is compliant ("不得超过"). A bag
    suspected lost (`waste.bag_missing`) is not stored waste and is not judged here.

    Episode = bag id; severity rises on the same episode. A bag handed over late is a closed
    firing. The rule clears when no bag in store has reached the warning age, on the evidence
    of the latest hand-over.
    """

    rule = rule("waste.storage_overdue")
    device_kinds = _SCALE
    lookback = _WASTE_LOOKBACK

    def judge(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        warn = timedelta(hours=site.profile.number("waste.warn_storage_h", device.device_id))
        limit = timedelta(hours=site.profile.number("waste.max_storage_h", device.device_id))
        grace = timedelta(hours=site.profile.number("waste.bag_missing_grace_h", device.device_id))
        book = ledger(device.events, now)
        # A bag suspected lost is `waste.bag_missing`'s, no longer stored waste getting older.
        lost = {id(b) for b in book.missing(now, grace)}
        findings: list[Finding] = []
        for bag in book.bags:
            if id(bag) in lost:
                continue
            age = (bag.out_at or now) - bag.in_at
            if age > limit or (bag.out_at is None and age >= warn):
                findings.append(
                    self._firing(site, device, bag, age=age, warn=warn, limit=limit, now=now)
                )
        clear = store_clear(
            self.rule.id, site, device, book=book, now=now, summary="暂存间内无超时医疗废物"
        )
        return [*findings, clear] if clear else findings

    def _firing(
        self,
        site: SiteData,
        device: DeviceData,
        bag: Bag,
        *,
        age: timedelta,
        warn: timedelta,
        limit: timedelta,
        now: datetime,
    ) -> Finding:
        over = age > limit
        if bag.out_at is None:
            summary = f"{bag.describe()}已暂存 {_hours(age):.1f} 小时仍未交接"
        else:
            summary = f"{bag.describe()}暂存 {_hours(age):.1f} 小时后才交接"
        bound = limit if over else warn
        return Finding(
            rule=self.rule.id,
            site_id=site.site_id,
            device_id=device.device_id,
            state="firing",
            severity=Sev.MAJOR if over else Sev.WARNING,
            started_at=bag.in_at,
            ended_at=bag.out_at,
            value=round(_hours(age), 3),
            limit=_hours(bound),
            unit="h",
            summary=f"{summary}（{'超过' if over else '已达预警'} {_hours(bound):g} 小时）",
            evidence_from=bag.in_at,
            evidence_to=bag.out_at or now,
            episode=bag.bag_id,
            details={"bag_id": bag.bag_id, "category": bag.category, "dept": bag.dept},
        )


class WeightMismatchDetector(DeviceDetector):
    """`waste.weight_mismatch`: a hand-over's weight vs the sum of its bags' bag_in weights,
    outside ±tolerance (exactly the tolerance passes). Episode = manifest number.

    A hand-over listing a bag that was not in store (never weighed in, or already handed over)
    cannot be reconciled and gets no verdict. A reconciled hand-over clears the rule.
    """

    rule = rule("waste.weight_mismatch")
    device_kinds = _SCALE
    lookback = timedelta(days=7)

    def judge(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        tolerance = site.profile.number("waste.weight_tolerance_pct", device.device_id)
        findings: list[Finding] = []
        for handover in ledger(device.events, now).handovers:
            if handover.unknown or handover.weight_kg is None or handover.expected_kg <= 0:
                continue
            diff = handover.weight_kg - handover.expected_kg
            # Scale by 1e-9 so that a weight exactly at the tolerance is not lost to rounding.
            off = abs(diff) * 100.0 > tolerance * handover.expected_kg * (1 + 1e-9)
            pct = diff / handover.expected_kg * 100.0
            findings.append(
                Finding(
                    rule=self.rule.id,
                    site_id=site.site_id,
                    device_id=device.device_id,
                    state="firing" if off else "clear",
                    severity=Sev.WARNING,
                    started_at=handover.ts,
                    ended_at=handover.ts,
                    value=round(pct, 3),
                    limit=tolerance,
                    unit="%",
                    summary=(
                        f"交接（联单 {handover.episode}）重量 {handover.weight_kg:g} kg，"
                        f"入库合计 {handover.expected_kg:g} kg，偏差 {pct:+.1f}%，"
                        f"超出 ±{tolerance:g}%"
                        if off
                        else f"交接（联单 {handover.episode}）重量核对一致"
                    ),
                    evidence_from=handover.ts,
                    evidence_to=handover.ts,
                    episode=handover.episode,
                    details={
                        "bag_ids": list(handover.bag_ids),
                        "handover_kg": handover.weight_kg,
                        "bag_in_total_kg": round(handover.expected_kg, 3),
                    },
                )
            )
        return findings


class BagMissingDetector(DeviceDetector):
    """`waste.bag_missing` (critical): a bag still not handed over `grace` after a hand-over that
    came after it and took waste of its category without it.

    A bag skipped once may be collected by a supplementary hand-over within the grace period; a
    bag handed over at any later time turns up and stops firing. Episode = bag id; clears when
    no bag is suspected missing, on the evidence of the latest hand-over.
    """

    rule = rule("waste.bag_missing")
    device_kinds = _SCALE
    lookback = _WASTE_LOOKBACK

    def judge(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        grace = timedelta(hours=site.profile.number("waste.bag_missing_grace_h", device.device_id))
        book = ledger(device.events, now)
        findings: list[Finding] = []
        for bag in book.missing(now, grace):
            skipped = bag.skipped_by[0]
            findings.append(
                Finding(
                    rule=self.rule.id,
                    site_id=site.site_id,
                    device_id=device.device_id,
                    state="firing",
                    severity=Sev.CRITICAL,
                    started_at=skipped.ts,
                    value=round(_hours(now - skipped.ts), 3),
                    limit=_hours(grace),
                    unit="h",
                    summary=(
                        f"{bag.describe()}于 {local_time(bag.in_at)} 入库，"
                        f"{local_time(skipped.ts)} 交接（联单 {skipped.episode}）未包含该袋，"
                        f"此后 {_hours(now - skipped.ts):.1f} 小时仍无交接记录，疑似流失"
                    ),
                    evidence_from=bag.in_at,
                    evidence_to=now,
                    episode=bag.bag_id,
                    details={
                        "bag_id": bag.bag_id,
                        "skipped_by": [h.episode for h in bag.skipped_by],
                        "weight_kg": bag.weight_kg,
                        "category": bag.category,
                    },
                )
            )
        if any(bag.skipped_by for bag in book.in_store()):
            return findings  # suspected or still in its grace period: no all-clear
        clear = store_clear(
            self.rule.id, site, device, book=book, now=now, summary="已交接，无疑似流失医疗废物"
        )
        return [clear] if clear else []
