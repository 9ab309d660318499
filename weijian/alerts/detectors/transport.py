"""Data integrity of the transport: device clock, lost messages and replayed messages.

`seq` is one counter per device shared by readings and events (docs/protocol.md), so both are
read as one stream of messages. A message is identified by its (seq, ts); its readings share
both.
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from operator import attrgetter

from weijian.alerts.detectors.common import (
    DeviceDetector,
    Horizon,
    floor_to,
    iso,
    local_time,
    seconds,
    since_label,
    stamps,
    stored_messages_of,
    within,
)
from weijian.alerts.detectors.presence import reporting_interval
from weijian.alerts.models import DeviceData, Finding, Message, SiteData
from weijian.alerts.models import Severity as Sev
from weijian.alerts.rules import rule
from weijian.devices.kinds import DeviceKind

_ALL = frozenset(DeviceKind)
# After a drop to a restart value, the next message must continue from it for the drop to
# count as a reboot (a replayed seq 0 or 1 followed by the old counter is not a reboot).
_RESTART_CONFIRM = 10
_GAP_BUCKET = timedelta(hours=1)


def messages(device: DeviceData, now: datetime) -> list[Message]:
    """The device's messages with a seq, in device-time order (then seq). Read-only: shared by
    the detectors that ask for the same device and time."""
    return device.memo(("messages", now), lambda: _messages(device, now))


def _messages(device: DeviceData, now: datetime) -> list[Message]:
    if device.ordered and not device.conflicts:
        return _stored_messages(device, now)
    parts: dict[tuple[int, datetime], dict[str, object]] = defaultdict(dict)
    received: dict[tuple[int, datetime], datetime | None] = {}
    conflicts: set[tuple[int, datetime]] = set()
    items: list[tuple[int | None, datetime, str, object, datetime | None]]
    items = [
        (r.seq, r.ts, r.metric, r.value, r.received_at)
        for r in (*device.readings, *device.conflicts)
    ]
    items += [
        (e.seq, e.ts, "@" + e.type, json.dumps(e.data, sort_keys=True, default=str), e.received_at)
        for e in device.events
    ]
    for seq, ts, name, value, received_at in items:
        if seq is None or ts > now:
            continue
        key = (seq, ts)
        if parts[key].setdefault(name, value) != value:
            conflicts.add(key)
        held = received.get(key)
        if held is None or (received_at is not None and received_at < held):
            received[key] = received_at
    found = [Message(seq, ts, received[seq, ts], (seq, ts) in conflicts) for seq, ts in parts]
    return sorted(found, key=lambda m: (m.ts, m.seq))


def _stored_messages(device: DeviceData, now: datetime) -> list[Message]:
    """`_messages` for stored data without conflicting copies (`models.stored_messages`), up
    to `now`: the window cache hands them over with the data, and a slice of a device takes
    its part of them."""
    found = stored_messages_of(device)
    return found[: bisect_right(found, now, key=_TS)]


def counts_up(device: DeviceData, now: datetime) -> bool:
    """Whether the device's messages (`messages`) carry strictly rising seqs in device-time
    order, none a conflicting copy: the usual case, in which there is nothing to split at a
    reboot, no seq repeats (no replay), and the gaps lie between neighbours. Memoised."""

    def compute() -> bool:
        found = messages(device, now)
        return all(a.seq < b.seq for a, b in pairwise(found)) and not any(m.conflict for m in found)

    return device.memo(("counts_up", now), compute)


def boot_segments(found: list[Message], restart_max: int) -> list[list[Message]]:
    """Split messages where the device rebooted: seq drops to a restart value (≤ restart_max)
    and the next message continues from there. Any other drop is reordering or replay."""
    segments: list[list[Message]] = [[]]
    top = -1
    for i, msg in enumerate(found):
        follower = found[i + 1].seq if i + 1 < len(found) else msg.seq
        if (
            msg.seq <= restart_max
            and msg.seq < top
            and msg.seq <= follower <= msg.seq + _RESTART_CONFIRM
        ):
            segments.append([])
            top = -1
        segments[-1].append(msg)
        top = max(top, msg.seq)
    return [s for s in segments if s]


def _restart_max(site: SiteData, device: DeviceData) -> int:
    return int(site.profile.number("seq.restart_max", device.device_id))


class ClockSkewDetector(DeviceDetector):
    """`data.clock_skew`: the device clock is off by more than the limit.

    The offset is estimated per bucket of receive time as max(ts − received_at): latency only
    makes a message look older, so the freshest message of a bucket bounds the offset from
    below and is nearly exact. A backlog delivered late therefore does not look like skew (its
    freshest item was taken just before reconnecting). A skew must hold in
    `clock_skew.min_buckets` consecutive buckets with data (a clock that jumps and stays
    jumped fires; one stray message does not). Episode = first skewed bucket; clears on a
    bucket within the limit.
    """

    rule = rule("data.clock_skew")
    device_kinds = _ALL
    lookback = timedelta(hours=2)
    by_device_time = False  # a skewed clock may stamp its data outside the window

    def judge(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        profile, dev = site.profile, device.device_id
        limit = profile.number("clock_skew.max_s", dev)
        bucket = seconds(profile.number("clock_skew.bucket_s", dev))
        needed = int(profile.number("clock_skew.min_buckets", dev))
        offsets = _bucket_offsets(device, now - self.lookback, now, bucket)
        keys = sorted(offsets)
        runs: list[tuple[list[datetime], datetime | None]] = []
        run: list[datetime] = []
        for key in keys:
            if abs(offsets[key]) > limit:
                run.append(key)
            elif run:
                runs.append((run, key))
                run = []
        if run:
            runs.append((run, None))
        skewed = [(r, end) for r, end in runs if len(r) >= needed]
        names = [since_label(r[0], now - self.lookback, bucket) for r, _ in skewed]
        findings = [
            self._firing(site, device, r, ended=end, offsets=offsets, bucket=bucket, episode=name)
            for (r, end), name in zip(skewed, names, strict=True)
        ]
        if keys and abs(offsets[keys[-1]]) <= limit:
            episode = names[-1] if names else f"ok@{iso(keys[-1])}"
            findings.append(
                self._clear(
                    site, device, keys[-1], bucket=bucket, offset=offsets[keys[-1]], episode=episode
                )
            )
        return findings

    def _firing(
        self,
        site: SiteData,
        device: DeviceData,
        run: list[datetime],
        *,
        ended: datetime | None,
        offsets: dict[datetime, float],
        bucket: timedelta,
        episode: str,
    ) -> Finding:
        limit = site.profile.number("clock_skew.max_s", device.device_id)
        worst = max((offsets[k] for k in run), key=abs)
        direction = "快" if worst > 0 else "慢"
        return Finding(
            rule=self.rule.id,
            site_id=site.site_id,
            device_id=device.device_id,
            state="firing",
            severity=Sev.WARNING,
            started_at=run[0],
            ended_at=ended,
            value=round(worst, 1),
            limit=limit,
            unit="s",
            summary=(
                f"设备时钟比平台{direction} {abs(worst) / 60:.1f} 分钟"
                f"（允许 ±{limit / 60:g} 分钟），"
                "时长类规则的判断可能失真"
            ),
            evidence_from=run[0],
            evidence_to=run[-1] + bucket,
            episode=episode,
            details={"buckets": len(run)},
        )

    def _clear(
        self,
        site: SiteData,
        device: DeviceData,
        key: datetime,
        *,
        bucket: timedelta,
        offset: float,
        episode: str,
    ) -> Finding:
        return Finding(
            rule=self.rule.id,
            site_id=site.site_id,
            device_id=device.device_id,
            state="clear",
            severity=Sev.WARNING,
            value=round(offset, 1),
            unit="s",
            summary="设备时钟偏差已恢复正常",
            evidence_from=key,
            evidence_to=key + bucket,
            episode=episode,
        )


_TS = attrgetter("ts")


def _bucket_offsets(
    device: DeviceData, start: datetime, now: datetime, bucket: timedelta
) -> dict[datetime, float]:
    """Per bucket of receive time in [start, now]: max(ts − received_at) in seconds. The
    readings of one message share both times, so each message counts once; the bucket of
    the previous message is reused while the receive times stay in it (they mostly rise)."""
    worst: dict[datetime, timedelta] = {}
    lo = hi = start  # the current bucket [lo, hi)
    for ts, _, received_at in stamps(device):
        if received_at is None or not start <= received_at <= now:
            continue
        if not lo <= received_at < hi:
            lo = floor_to(received_at, bucket)
            hi = lo + bucket
        skew = ts - received_at
        held = worst.get(lo)
        if held is None or skew > held:
            worst[lo] = skew
    return {key: skew.total_seconds() for key, skew in worst.items()}


@dataclass(frozen=True)
class Gap:
    """Seqs missing between two messages of one boot."""

    before: Message
    after: Message

    @property
    def missing(self) -> int:
        return self.after.seq - self.before.seq - 1


def gaps(found: list[Message], restart_max: int, *, rising: bool = False) -> list[Gap]:
    """Missing seqs within each boot, whatever order the messages arrived in. `rising`: the
    seqs rise strictly in the order given (`counts_up`), so the gaps are between neighbours."""
    if rising:
        return [Gap(a, b) for a, b in pairwise(found) if b.seq > a.seq + 1]
    result: list[Gap] = []
    for segment in boot_segments(found, restart_max):
        ordered = sorted({m.seq: m for m in reversed(segment)}.values(), key=lambda m: m.seq)
        result += [Gap(a, b) for a, b in pairwise(ordered) if b.seq > a.seq + 1]
    return result


def replays(found: list[Message], restart_max: int) -> list[Message]:
    """Copies of a seq already seen in the same boot at another time or with other values;
    the copy that arrived later is the replay."""
    copies: list[Message] = []
    for segment in boot_segments(found, restart_max):
        by_seq: dict[int, list[Message]] = defaultdict(list)
        for msg in segment:
            by_seq[msg.seq].append(msg)
        for group in by_seq.values():
            group.sort(key=lambda m: (m.arrived, m.ts))
            copies += group[1:]
            copies += [m for m in group[:1] if m.conflict]
    return sorted(copies, key=lambda m: (m.arrived, m.seq))


def _maybe_before(gap: Gap, start: datetime, interval: timedelta) -> bool:
    """Whether the gap's missing messages may be stamped before the window's `start`: the
    clock went back between its two messages (the later one is stamped earlier), so the
    messages sent between them, at the reporting interval, precede the later one's stamp and
    may fall before the window (which is cut by device time). Seen from the whole lookback
    once they are in it, they are no gap."""
    if gap.after.ts >= gap.before.ts:
        return False
    return gap.after.ts - (gap.after.seq - gap.before.seq) * interval < start


def _last_message_before(device: DeviceData, when: datetime) -> datetime | None:
    """Device time of the device's last message before `when` (data in device-time order)."""
    latest: datetime | None = None
    for items in (device.readings, device.events):
        i = bisect_left(items, when, key=_TS)
        if i and (latest is None or items[i - 1].ts > latest):
            latest = items[i - 1].ts
    return latest


def _max_seq_before(device: DeviceData, when: datetime) -> int:
    """The highest seq of the device's messages stamped before `when` (data in device-time
    order; −1 when there is none). Memoised: both seq rules ask it of the same horizon."""
    return device.memo(("max_seq_before", when), lambda: _scan_max_seq(device, when))


def _scan_max_seq(device: DeviceData, when: datetime) -> int:
    top = -1
    for items in (device.readings, device.events):
        for row in items[: bisect_left(items, when, key=_TS)]:
            if row.seq is not None and row.seq > top:
                top = row.seq
    return top


def _hourly(found: list[tuple[datetime, Message]]) -> dict[datetime, list[Message]]:
    buckets: dict[datetime, list[Message]] = defaultdict(list)
    for when, msg in found:
        buckets[floor_to(when, _GAP_BUCKET)].append(msg)
    return buckets


class _SeqDetector(DeviceDetector):
    """Shared shape of the seq rules: closed episodes per hour, cleared by clean data."""

    device_kinds = _ALL
    lookback = timedelta(hours=2)

    def horizon(
        self, site: SiteData, device: DeviceData, since: datetime, now: datetime
    ) -> Horizon | None:
        """From the last message before the hour in which a gap may have become confirmed
        (its later message arrived within the grace time of the last judgement, or is new),
        provided the messages from there on count up in device-time order. Then every new
        message continues the counter past every earlier one of its boot: it can neither fill
        an older gap nor repeat an older seq, and each hour from there is seen whole. Anything
        else (a reboot, a replay, a clock that went back, a conflicting copy) is judged over
        the whole lookback."""
        if device.conflicts:
            return None
        grace = seconds(site.profile.number("seq.gap_grace_s", device.device_id))
        ahead = seconds(site.profile.number("clock_skew.max_s", device.device_id))
        hour = floor_to(since - grace - ahead, _GAP_BUCKET)
        start = _last_message_before(device, hour)
        if start is None:
            return None
        part = within(device, start, now)
        if not counts_up(part, now):
            return None
        found = messages(part, now)
        # And every message stamped before it must come before it in the counter too: a
        # clock set back stamps later messages earlier, and those would look missing from
        # the part judged (a gap the whole lookback does not have).
        if found and _max_seq_before(device, start) >= found[0].seq:
            return None
        return Horizon(start)

    def clear(
        self,
        site: SiteData,
        device: DeviceData,
        found: list[Message],
        since: datetime | None,
        episode: str | None,
    ) -> Finding | None:
        """Clear once the messages after the last problem span `data.clear_after_s`."""
        need = seconds(site.profile.number("data.clear_after_s", device.device_id))
        clean = [m for m in found if since is None or m.ts > since]
        if not clean or clean[-1].ts - clean[0].ts < need:
            return None
        return Finding(
            rule=self.rule.id,
            site_id=site.site_id,
            device_id=device.device_id,
            state="clear",
            severity=Sev.WARNING,
            summary="数据序号已连续正常",
            evidence_from=clean[0].ts,
            evidence_to=clean[-1].ts,
            episode=episode or f"ok@{iso(floor_to(clean[-1].ts, _GAP_BUCKET))}",
        )


class SequenceGapDetector(_SeqDetector):
    """`data.sequence_gap`: seqs missing within one boot of the device.

    Messages are ordered by device time and split at reboots (seq restarts from 0/1), then the
    seqs of each boot are compared as a set, so out-of-order arrival never makes a gap. A gap
    counts only once the message after it has been in for `seq.gap_grace_s` (a backlog still
    arriving fills it), and not right after a message stamped ahead of its arrival time (the
    messages after it may still lie in the future of `now`). Episodes are hours (by the device
    time after the gap) with the number of missing messages.
    """

    rule = rule("data.sequence_gap")

    def judge(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        grace = seconds(site.profile.number("seq.gap_grace_s", device.device_id))
        ahead = seconds(site.profile.number("clock_skew.max_s", device.device_id))
        found = messages(device, now)
        every = gaps(found, _restart_max(site, device), rising=counts_up(device, now))
        # A gap counts once the message after it has been in for the grace time (a backlog
        # still arriving fills it), and not after a message stamped ahead of its arrival:
        # with the clock ahead, the next messages carry device times after `now` and are not
        # in the window yet. While a gap is pending there is no clear either.
        start = site.window_start(now, self.lookback)
        interval = timedelta(seconds=reporting_interval(site, device))
        confirmed = [
            g
            for g in every
            if now - g.after.arrived >= grace
            and g.before.ts - g.before.arrived <= ahead
            and not _maybe_before(g, start, interval)
        ]
        by_hour: dict[datetime, list[Gap]] = defaultdict(list)
        for gap in confirmed:
            by_hour[floor_to(gap.after.ts, _GAP_BUCKET)].append(gap)
        findings = [self._firing(site, device, hour, g) for hour, g in sorted(by_hour.items())]
        if len(confirmed) < len(every):
            return findings
        last = max(confirmed, key=lambda g: g.after.ts, default=None)
        episode = iso(floor_to(last.after.ts, _GAP_BUCKET)) if last else None
        clear = self.clear(site, device, found, last.after.ts if last else None, episode)
        return [*findings, clear] if clear else findings

    def _firing(
        self, site: SiteData, device: DeviceData, hour: datetime, found: list[Gap]
    ) -> Finding:
        missing = sum(g.missing for g in found)
        first = min(found, key=lambda g: g.before.ts)
        last = max(found, key=lambda g: g.after.ts)
        spans = "、".join(f"{g.before.seq + 1}–{g.after.seq - 1}" for g in found[:5])
        return Finding(
            rule=self.rule.id,
            site_id=site.site_id,
            device_id=device.device_id,
            state="firing",
            severity=Sev.WARNING,
            started_at=first.before.ts,
            ended_at=last.after.ts,
            value=float(missing),
            limit=0.0,
            unit="条",
            summary=f"{local_time(hour)} 起一小时内缺失 {missing} 条数据（序号 {spans}）",
            evidence_from=first.before.ts,
            evidence_to=last.after.ts,
            episode=iso(hour),
            details={"gaps": [[g.before.seq, g.after.seq] for g in found[:20]]},
        )


class ReplayDetector(_SeqDetector):
    """`data.replay`: a seq seen again in the same boot at another device time, or with other
    values (the store keeps one row per (device, metric, ts), so a replay usually shows as an
    old seq at a new ts). Episodes are hours of arrival, with the number of replayed messages.
    """

    rule = rule("data.replay")

    def judge(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        found = messages(device, now)
        # Strictly rising seqs, no conflicting copy: no seq was used twice.
        copies = [] if counts_up(device, now) else replays(found, _restart_max(site, device))
        findings = [
            self._firing(site, device, hour, group)
            for hour, group in sorted(_hourly([(m.arrived, m) for m in copies]).items())
        ]
        last = copies[-1] if copies else None
        episode = iso(floor_to(last.arrived, _GAP_BUCKET)) if last else None
        clear = self.clear(site, device, found, max((m.ts for m in copies), default=None), episode)
        return [*findings, clear] if clear else findings

    def _firing(
        self, site: SiteData, device: DeviceData, hour: datetime, copies: list[Message]
    ) -> Finding:
        seqs = "、".join(str(m.seq) for m in copies[:8])
        return Finding(
            rule=self.rule.id,
            site_id=site.site_id,
            device_id=device.device_id,
            state="firing",
            severity=Sev.MAJOR,
            started_at=min(m.ts for m in copies),
            ended_at=max(m.ts for m in copies),
            value=float(len(copies)),
            limit=0.0,
            unit="条",
            summary=f"{len(copies)} 条数据重复使用已用过的序号（{seqs}），疑似重放",
            evidence_from=min(m.ts for m in copies),
            evidence_to=max(m.ts for m in copies),
            episode=iso(hour),
            details={"seqs": [m.seq for m in copies[:50]]},
        )
