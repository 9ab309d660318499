"""Alert lifecycle: findings become alerts (one active per fingerprint), with history.

firing → acknowledged → resolved. Severity may rise. A closed episode (batch, bag, day) is
raised at most once. While a fingerprint (rule, site, device) keeps producing bad episodes it
is one alert: a new episode while the alert is active is an occurrence of it, and one that
starts within `REOPEN_WITHIN` of the last violation of an alert the system resolved reopens
that alert (one notification per incident, not one per basket). Clear evidence after the last
violation resolves the alert, after a streak of clear evaluations for condition rules
(hysteresis) and at once for episode rules. Silences drop findings in their scope; an offline
device's data rules are inhibited, and so are the offline alerts and data rules of the devices
of a site that is silent as a whole (one site-level alert speaks for them).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from weijian.alerts import repository
from weijian.alerts.models import Alert, AlertStatus, Finding, Severity
from weijian.alerts.rules import rule as rule_spec
from weijian.db.connection import AsyncConn

log = logging.getLogger(__name__)

SYSTEM = "system"
# Clear evaluations in a row before a condition alert (one without episodes) resolves.
CONDITION_CLEAR_STREAK = 2
# A violation starting this soon after the last one of an alert the system resolved continues
# that alert (reopened) instead of raising a new one: the same incident, flapping.
REOPEN_WITHIN = timedelta(hours=1)


class AlertError(ValueError):
    """An alert action that cannot be carried out (unknown alert, wrong state)."""


@dataclass(frozen=True)
class AlertChange:
    """What happened to an alert, for the stages downstream (inspections, notify, the wall)."""

    # "reopened": a resolved alert fired again within REOPEN_WITHIN (no new notification).
    kind: Literal["fired", "escalated", "reopened", "resolved"]
    alert_id: int
    rule: str
    severity: Severity
    site_id: str
    device_id: str | None
    summary: str


def fingerprint(rule_id: str, site_id: str, device_id: str | None) -> str:
    return f"{rule_id}|{site_id}|{device_id or '-'}"


def _evidence_time(finding: Finding, now: datetime) -> datetime:
    return finding.ended_at or finding.evidence_to or finding.started_at or now


def _silenced(finding: Finding, silences: Sequence[dict[str, Any]], now: datetime) -> bool:
    """In a silence's scope while it is in force, or (a closed episode) when it happened."""
    happened = now if finding.ended_at is None else _evidence_time(finding, now)
    for s in silences:
        if s["site_id"] is not None and s["site_id"] != finding.site_id:
            continue
        if s["device_id"] is not None and s["device_id"] != finding.device_id:
            continue
        if s["rule"] is not None and s["rule"] != finding.rule:
            continue
        if any(s["starts_at"] <= t < s["ends_at"] for t in (now, happened)):
            return True
    return False


OFFLINE = "device.offline"


def _inhibited(finding: Finding, offline: set[str], silent_sites: set[str]) -> bool:
    # An offline device's own data rules would only restate that it is offline; in a site
    # silent as a whole, the site-level offline alert speaks for every device.
    if finding.site_id in silent_sites and finding.device_id is not None:
        return finding.rule == OFFLINE or finding.rule.startswith("data.")
    return finding.device_id in offline and finding.rule.startswith("data.")


def fold_silent_sites(findings: Sequence[Finding]) -> list[Finding]:
    """Inhibition: when every device of a site is offline, raise one site-level alert instead
    of one per device (a silent site — power cut, network down — is one event); once any of
    its devices is heard again, the site-level alert gets clear evidence."""
    by_site: dict[str, list[Finding]] = defaultdict(list)
    for f in findings:
        if f.rule == OFFLINE and f.device_id is not None:
            by_site[f.site_id].append(f)
    folded = [f for f in findings if not (f.rule == OFFLINE and f.site_id in by_site)]
    for site_id, group in by_site.items():
        firing = [f for f in group if f.state == "firing"]
        if len(group) >= 2 and len(firing) == len(group):
            first = min(
                firing,
                key=lambda f: f.started_at or f.evidence_to or datetime.max.replace(tzinfo=UTC),
            )
            folded.append(
                replace(
                    first,
                    device_id=None,
                    severity=max((f.severity for f in firing), key=lambda v: v.rank),
                    summary=f"站点全部 {len(group)} 台设备离线（{first.summary}）",
                    details={"devices": sorted(str(f.device_id) for f in group)},
                )
            )
            continue
        folded.extend(group)
        if firing != group:
            times = [t for f in group if f.state == "clear" and (t := f.evidence_to or f.ended_at)]
            heard = max(times, default=None)
            folded.append(
                Finding(
                    rule=OFFLINE,
                    site_id=site_id,
                    device_id=None,
                    state="clear",
                    severity=Severity.WARNING,
                    evidence_to=heard,
                    ended_at=heard,
                    summary="站点设备已恢复上报",
                    episode=f"site-back@{heard}",
                )
            )
    return folded


def _silent_sites(findings: Sequence[Finding], stored: set[str]) -> set[str]:
    """Sites silent as a whole: a site-level offline alert is active and this evaluation has
    no clear for it, or this evaluation folded the site into one."""
    silent = set(stored)
    for f in findings:
        if f.rule == OFFLINE and f.device_id is None:
            if f.state == "firing":
                silent.add(f.site_id)
            else:
                silent.discard(f.site_id)
    return silent


@dataclass
class _Known:
    """The stored alerts and episodes one evaluation's findings touch: read in one round of
    queries (not two per finding: a scan re-reads hours of episodes raised before) and kept
    current as the evaluation writes."""

    # fingerprint → its latest alert (locked), with who resolved it
    latest: dict[str, dict[str, Any]]
    seen: set[tuple[str, str]]

    def active(self, key: str) -> dict[str, Any] | None:
        row = self.latest.get(key)
        return row if row is not None and row["status"] != AlertStatus.RESOLVED.value else None

    def updated(self, row: dict[str, Any], values: dict[str, Any]) -> None:
        row.update(values)

    async def reload(self, conn: AsyncConn, key: str, alert_id: int) -> None:
        row = await repository.alert_row(conn=conn, alert_id=alert_id)
        if row is not None:
            self.latest[key] = row

    async def record_episode(
        self, conn: AsyncConn, key: str, episode: str, alert_id: int, now: datetime
    ) -> None:
        await repository.record_episode(
            conn=conn, fingerprint=key, episode=episode, alert_id=alert_id, at=now
        )
        self.seen.add((key, episode))


def _latest_clears(findings: Sequence[Finding], now: datetime) -> set[int]:
    """Per fingerprint, the clear with the latest evidence (ids of the findings): the state a
    run leaves a (device, rule) in is its latest evidence (`common.current_state`)."""
    best: dict[str, Finding] = {}
    for f in findings:
        if f.state != "clear":
            continue
        key = fingerprint(f.rule, f.site_id, f.device_id)
        held = best.get(key)
        if held is None or _evidence_time(f, now) >= _evidence_time(held, now):
            best[key] = f
    return {id(f) for f in best.values()}


async def apply_findings(
    *, conn: AsyncConn, findings: Sequence[Finding], now: datetime
) -> list[AlertChange]:
    """Reconcile findings with stored alerts, in the caller's transaction."""
    findings = fold_silent_sites(findings)
    if not findings:
        return []
    times = [_evidence_time(f, now) for f in findings]
    rows = await repository.lifecycle_rows(
        conn=conn,
        fingerprints=sorted({fingerprint(f.rule, f.site_id, f.device_id) for f in findings}),
        episodes=sorted({f.episode for f in findings if f.episode}),
        site_ids=sorted({f.site_id for f in findings}),
        start=min([*times, now]),
        end=max([*times, now]),
    )
    silences, offline = rows.silences, rows.offline_devices
    silent_sites = _silent_sites(findings, rows.silent_sites)
    known = _Known(rows.latest, rows.seen)
    changes: list[AlertChange] = []
    ordered = sorted(findings, key=lambda f: (_evidence_time(f, now), f.state == "firing"))
    clears = _latest_clears(findings, now)
    for finding in ordered:
        if finding.state == "firing":
            if _silenced(finding, silences, now) or _inhibited(finding, offline, silent_sites):
                continue
            change = await _fire(conn, finding, now, known)
        else:
            if id(finding) not in clears:
                continue  # one clear step per fingerprint per evaluation: its latest evidence
            change = await _clear(conn, finding, now, known)
        if change is not None:
            changes.append(change)
    return changes


def _evidence(finding: Finding) -> dict[str, Any]:
    return {
        "value": finding.value,
        "limit_value": finding.limit,
        "unit": finding.unit,
        "summary": finding.summary,
        "evidence_from": finding.evidence_from,
        "evidence_to": finding.evidence_to,
        "evidence_metric": finding.evidence_metric,
        "details": dict(finding.details),
    }


async def _late_occurrence(
    conn: AsyncConn,
    latest: dict[str, Any],
    finding: Finding,
    *,
    key: str,
    now: datetime,
    known: _Known,
) -> None:
    """Record an old violation on the resolved alert that covered it (once per episode)."""
    if not finding.episode or (key, finding.episode) in known.seen:
        return
    await known.record_episode(conn, key, finding.episode, int(latest["id"]), now)


async def _record_firing(
    conn: AsyncConn,
    *,
    key: str,
    finding: Finding,
    alert_id: int,
    action: str,
    from_status: str | None,
    severity: Severity,
    now: datetime,
    known: _Known,
) -> None:
    """The episode (seen once) and the history entry of an alert that fires or fires again."""
    if finding.episode:
        await known.record_episode(conn, key, finding.episode, alert_id, now)
    await repository.add_history(
        conn=conn,
        alert_id=alert_id,
        action=action,
        actor=SYSTEM,
        from_status=from_status,
        to_status=AlertStatus.FIRING.value,
        severity=severity.value,
        at=now,
        note=finding.summary,
        details={"episode": finding.episode, "value": finding.value},
    )


async def _reopen(
    conn: AsyncConn,
    latest: dict[str, Any],
    finding: Finding,
    *,
    key: str,
    seen_at: datetime,
    now: datetime,
    known: _Known,
) -> AlertChange:
    """The resolved alert fires again: the same incident continues (no new notification)."""
    alert_id = int(latest["id"])
    severity = max(Severity(latest["severity"]), finding.severity, key=lambda v: v.rank)
    status = latest["status"]
    values = {
        "status": AlertStatus.FIRING.value,
        "severity": severity.value,
        "resolved_at": None,
        "resolved_by": None,
        "last_seen_at": seen_at,
        "clear_streak": 0,
        "occurrences": int(latest["occurrences"]) + 1,
        **_evidence(finding),
    }
    await repository.update_alert(conn=conn, alert_id=alert_id, values=values)
    known.updated(latest, values)
    await _record_firing(
        conn,
        key=key,
        finding=finding,
        alert_id=alert_id,
        action="reopened",
        from_status=status,
        severity=severity,
        now=now,
        known=known,
    )
    return AlertChange(
        "reopened",
        alert_id,
        finding.rule,
        severity,
        finding.site_id,
        finding.device_id,
        finding.summary,
    )


async def _fire(
    conn: AsyncConn, finding: Finding, now: datetime, known: _Known
) -> AlertChange | None:
    key = fingerprint(finding.rule, finding.site_id, finding.device_id)
    seen_at = _evidence_time(finding, now)
    active = known.active(key)
    repeat = bool(finding.episode) and (key, str(finding.episode)) in known.seen
    if repeat and (active is None or Severity(active["severity"]).rank >= finding.severity.rank):
        # This episode was raised already (and has not grown more severe). Its evidence may
        # have grown (a spell that went on): the alert's last violation moves with it.
        if active is not None and seen_at > active["last_seen_at"]:
            moved = {"last_seen_at": seen_at}
            await repository.update_alert(conn=conn, alert_id=int(active["id"]), values=moved)
            known.updated(active, moved)
        return None
    if active is None:
        latest = known.latest.get(key)
        if latest is not None and latest["resolved_by"] == SYSTEM:
            if seen_at <= latest["last_seen_at"]:
                # Not news: a violation no later than what the resolved alert covered (e.g. a
                # closed spell renamed as the data window slides past its start).
                await _late_occurrence(conn, latest, finding, key=key, now=now, known=known)
                return None
            start = finding.started_at or seen_at
            if start - latest["last_seen_at"] <= REOPEN_WITHIN:
                return await _reopen(
                    conn, latest, finding, key=key, seen_at=seen_at, now=now, known=known
                )
    evidence = _evidence(finding)
    if active is None:
        alert_id = await repository.insert_alert(
            conn=conn,
            values={
                "fingerprint": key,
                "rule": finding.rule,
                "severity": finding.severity.value,
                "status": AlertStatus.FIRING.value,
                "site_id": finding.site_id,
                "device_id": finding.device_id,
                "started_at": finding.started_at or seen_at,
                "last_seen_at": seen_at,
                "detected_at": now,
                "source": rule_spec(finding.rule).source,
                **evidence,
            },
        )
        await known.reload(conn, key, alert_id)
        await _record_firing(
            conn,
            key=key,
            finding=finding,
            alert_id=alert_id,
            action="fired",
            from_status=None,
            severity=finding.severity,
            now=now,
            known=known,
        )
        return AlertChange(
            "fired",
            alert_id,
            finding.rule,
            finding.severity,
            finding.site_id,
            finding.device_id,
            finding.summary,
        )

    alert_id = int(active["id"])
    current = Severity(active["severity"])
    if finding.episode is None and current.rank >= finding.severity.rank:
        # The same ongoing condition: refresh its evidence, no new occurrence.
        refresh = {
            "last_seen_at": max(seen_at, active["last_seen_at"]),
            "clear_streak": 0,
            **evidence,
        }
        await repository.update_alert(conn=conn, alert_id=alert_id, values=refresh)
        known.updated(active, refresh)
        return None
    values: dict[str, Any] = {
        "last_seen_at": max(seen_at, active["last_seen_at"]),
        "clear_streak": 0,
        **evidence,
    }
    if finding.episode and not repeat:
        values["occurrences"] = int(active["occurrences"]) + 1
        await known.record_episode(conn, key, finding.episode, alert_id, now)
    escalated = finding.severity.rank > current.rank
    if escalated:
        values["severity"] = finding.severity.value
    status = active["status"]
    await repository.update_alert(conn=conn, alert_id=alert_id, values=values)
    known.updated(active, values)
    await repository.add_history(
        conn=conn,
        alert_id=alert_id,
        action="escalated" if escalated else "repeated",
        actor=SYSTEM,
        from_status=status,
        to_status=status,
        severity=(finding.severity if escalated else current).value,
        at=now,
        note=finding.summary,
        details={"episode": finding.episode, "value": finding.value},
    )
    if escalated:
        return AlertChange(
            "escalated",
            alert_id,
            finding.rule,
            finding.severity,
            finding.site_id,
            finding.device_id,
            finding.summary,
        )
    return None


async def _clear(
    conn: AsyncConn, finding: Finding, now: datetime, known: _Known
) -> AlertChange | None:
    key = fingerprint(finding.rule, finding.site_id, finding.device_id)
    active = known.active(key)
    if active is None:
        return None
    if _evidence_time(finding, now) <= active["last_seen_at"]:
        return None  # clear evidence older than the violation says nothing
    streak = int(active["clear_streak"]) + 1
    needed = 1 if finding.episode else CONDITION_CLEAR_STREAK
    alert_id = int(active["id"])
    if streak < needed:
        await repository.update_alert(conn=conn, alert_id=alert_id, values={"clear_streak": streak})
        known.updated(active, {"clear_streak": streak})
        return None
    resolved = {"resolved_at": now, "resolved_by": SYSTEM, "clear_streak": streak}
    await _move(
        conn,
        active,
        AlertStatus.RESOLVED,
        actor=SYSTEM,
        now=now,
        note=finding.summary or "condition cleared",
        values=resolved,
    )
    known.updated(active, {"status": AlertStatus.RESOLVED.value, **resolved})
    return AlertChange(
        "resolved",
        alert_id,
        active["rule"],
        Severity(active["severity"]),
        active["site_id"],
        active["device_id"],
        finding.summary,
    )


async def _move(
    conn: AsyncConn,
    row: dict[str, Any],
    to: AlertStatus,
    *,
    actor: str,
    now: datetime,
    note: str | None,
    values: dict[str, Any],
) -> None:
    """Change an alert's status and append the step to its history."""
    await repository.update_alert(
        conn=conn, alert_id=int(row["id"]), values={"status": to.value, **values}
    )
    await repository.add_history(
        conn=conn,
        alert_id=int(row["id"]),
        action=to.value,
        actor=actor,
        from_status=row["status"],
        to_status=to.value,
        severity=row["severity"],
        at=now,
        note=note,
    )


async def acknowledge(
    *, conn: AsyncConn, alert_id: int, actor: str, now: datetime, note: str | None = None
) -> Alert:
    """firing → acknowledged, by a person."""
    row = await repository.lock_alert(conn=conn, alert_id=alert_id)
    if row is None:
        raise AlertError(f"no alert {alert_id}")
    if row["status"] != AlertStatus.FIRING.value:
        raise AlertError(
            f"alert {alert_id} is {row['status']}; only a firing alert can be acknowledged"
        )
    await _move(
        conn,
        row,
        AlertStatus.ACKNOWLEDGED,
        actor=actor,
        now=now,
        note=note,
        values={"acknowledged_at": now, "acknowledged_by": actor},
    )
    alert = await repository.get_alert(conn=conn, alert_id=alert_id)
    assert alert is not None
    return alert


async def resolve(
    *, conn: AsyncConn, alert_id: int, actor: str, now: datetime, note: str | None = None
) -> Alert:
    """Resolve an alert by hand (e.g. after an on-site check)."""
    row = await repository.lock_alert(conn=conn, alert_id=alert_id)
    if row is None:
        raise AlertError(f"no alert {alert_id}")
    if row["status"] == AlertStatus.RESOLVED.value:
        raise AlertError(f"alert {alert_id} is already resolved")
    await _move(
        conn,
        row,
        AlertStatus.RESOLVED,
        actor=actor,
        now=now,
        note=note,
        values={"resolved_at": now, "resolved_by": actor},
    )
    alert = await repository.get_alert(conn=conn, alert_id=alert_id)
    assert alert is not None
    return alert


async def list_alerts(
    *,
    conn: AsyncConn,
    status: str | None = None,
    site_id: str | None = None,
    rule: str | None = None,
    site_ids: Sequence[str] | None = None,
    limit: int = 200,
) -> list[Alert]:
    return await repository.list_alerts(
        conn=conn, status=status, site_id=site_id, rule=rule, site_ids=site_ids, limit=limit
    )


async def get_alert(*, conn: AsyncConn, alert_id: int) -> Alert | None:
    return await repository.get_alert(conn=conn, alert_id=alert_id)


async def alert_history(*, conn: AsyncConn, alert_id: int) -> list[dict[str, Any]]:
    return await repository.history(conn=conn, alert_id=alert_id)


# -- reads for the API (wall) ----------------------------------------------------------------


async def active_by_site(
    *, conn: AsyncConn, site_ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Sites with active alerts: counts by status and the worst severity (the wall's colours)."""
    return await repository.active_by_site(conn=conn, site_ids=site_ids)


async def count_detected_since(
    *, conn: AsyncConn, since: datetime, site_ids: Sequence[str] | None = None
) -> dict[str, int]:
    """Alerts detected since a time, by severity (今日告警)."""
    return await repository.count_detected_since(conn=conn, since=since, site_ids=site_ids)


async def add_silence(
    *,
    conn: AsyncConn,
    site_id: str | None,
    device_id: str | None,
    rule: str | None,
    starts_at: datetime,
    ends_at: datetime,
    reason: str,
    actor: str,
) -> int:
    """A maintenance window: findings in its scope raise nothing until it ends."""
    if ends_at <= starts_at:
        raise AlertError("a silence must end after it starts")
    if site_id is None and device_id is None and rule is None:
        raise AlertError("a silence needs a scope: a site, a device and/or a rule")
    return await repository.insert_silence(
        conn=conn,
        site_id=site_id,
        device_id=device_id,
        rule=rule,
        starts_at=starts_at,
        ends_at=ends_at,
        reason=reason,
        created_by=actor,
    )
