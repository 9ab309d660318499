"""Alert lifecycle on the real database: severity, hysteresis, silences, inhibition, tuning."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from tests.factories import make_site
from weijian.alerts import repository, service, tuning
from weijian.alerts.models import Finding, Severity
from weijian.config import Settings
from weijian.db.connection import AsyncConn, connect
from weijian.devices import repository as devices_repo

NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


async def setup(settings: Settings, kind: str = "medical_institution") -> tuple[AsyncConn, str]:
    site_id = await make_site(settings, kind=kind)
    conn = await connect(settings.database_url)
    device_kind = "waste_scale" if kind == "medical_institution" else "steam_cabinet"
    await devices_repo.insert_device(
        conn=conn, device_id="dev-1", site_id=site_id, kind=device_kind, name=None, interval_s=60
    )
    return conn, site_id


def finding(
    site_id: str,
    rule: str,
    *,
    state: str = "firing",
    severity: Severity = Severity.MAJOR,
    episode: str | None = None,
    at: datetime = NOW,
) -> Finding:
    return Finding(
        rule=rule,
        site_id=site_id,
        device_id="dev-1",
        state=state,  # type: ignore[arg-type]
        severity=severity,
        started_at=at,
        ended_at=at,
        episode=episode,
        summary="s",
    )


@pytest.mark.anyio
async def test_severity_rises_on_the_same_episode(settings: Settings) -> None:
    conn, site = await setup(settings)
    async with conn:
        first = await service.apply_findings(
            conn=conn,
            findings=[
                finding(site, "waste.storage_overdue", severity=Severity.WARNING, episode="bag-1")
            ],
            now=NOW,
        )
        assert [c.kind for c in first] == ["fired"]
        same = await service.apply_findings(
            conn=conn,
            findings=[
                finding(site, "waste.storage_overdue", severity=Severity.WARNING, episode="bag-1")
            ],
            now=NOW + timedelta(minutes=1),
        )
        assert same == []
        worse = await service.apply_findings(
            conn=conn,
            findings=[
                finding(
                    site,
                    "waste.storage_overdue",
                    severity=Severity.MAJOR,
                    episode="bag-1",
                    at=NOW + timedelta(hours=12),
                )
            ],
            now=NOW + timedelta(hours=12),
        )
        assert [(c.kind, c.severity) for c in worse] == [("escalated", Severity.MAJOR)]
        alerts = await service.list_alerts(conn=conn)
        assert len(alerts) == 1
        assert alerts[0].severity == Severity.MAJOR
        assert alerts[0].occurrences == 1


@pytest.mark.anyio
async def test_condition_alert_needs_two_clear_evaluations(settings: Settings) -> None:
    conn, site = await setup(settings)
    rule = "waste.door_open_long"
    async with conn:
        await service.apply_findings(conn=conn, findings=[finding(site, rule)], now=NOW)
        later = NOW + timedelta(minutes=5)
        assert (
            await service.apply_findings(
                conn=conn, findings=[finding(site, rule, state="clear", at=later)], now=later
            )
            == []
        )
        again = NOW + timedelta(minutes=6)
        assert (
            await service.apply_findings(
                conn=conn, findings=[finding(site, rule, state="clear", at=again)], now=again
            )
            != []
        )
        assert (await service.list_alerts(conn=conn))[0].status == "resolved"


@pytest.mark.anyio
async def test_old_clear_evidence_does_not_resolve(settings: Settings) -> None:
    conn, site = await setup(settings)
    async with conn:
        await service.apply_findings(
            conn=conn, findings=[finding(site, "waste.bag_missing", episode="b1", at=NOW)], now=NOW
        )
        stale = finding(
            site, "waste.bag_missing", state="clear", episode="b0", at=NOW - timedelta(hours=1)
        )
        assert await service.apply_findings(conn=conn, findings=[stale], now=NOW) == []


@pytest.mark.anyio
async def test_silence_mutes_its_scope_only(settings: Settings) -> None:
    conn, site = await setup(settings)
    async with conn:
        await service.add_silence(
            conn=conn,
            site_id=site,
            device_id=None,
            rule="waste.door_open_long",
            starts_at=NOW - timedelta(hours=1),
            ends_at=NOW + timedelta(hours=1),
            reason="检修",
            actor="admin",
        )
        changes = await service.apply_findings(
            conn=conn,
            findings=[
                finding(site, "waste.door_open_long"),
                finding(site, "waste.uv_not_done", episode="d1"),
            ],
            now=NOW,
        )
        assert [c.rule for c in changes] == ["waste.uv_not_done"]
        after = NOW + timedelta(hours=2)
        changes = await service.apply_findings(
            conn=conn, findings=[finding(site, "waste.door_open_long", at=after)], now=after
        )
        assert [c.rule for c in changes] == ["waste.door_open_long"]


@pytest.mark.anyio
async def test_offline_device_inhibits_its_data_rules(settings: Settings) -> None:
    conn, site = await setup(settings)
    async with conn:
        await service.apply_findings(
            conn=conn,
            findings=[finding(site, "device.offline", severity=Severity.WARNING)],
            now=NOW,
        )
        changes = await service.apply_findings(
            conn=conn,
            findings=[
                finding(site, "data.sequence_gap", episode="g1"),
                finding(site, "waste.bag_missing", episode="b1"),
            ],
            now=NOW,
        )
        assert [c.rule for c in changes] == ["waste.bag_missing"]


@pytest.mark.anyio
async def test_acknowledge_then_resolve_by_hand(settings: Settings) -> None:
    conn, site = await setup(settings)
    async with conn:
        changes = await service.apply_findings(
            conn=conn, findings=[finding(site, "waste.bag_missing", episode="b")], now=NOW
        )
        alert_id = changes[0].alert_id
        acked = await service.acknowledge(conn=conn, alert_id=alert_id, actor="zhang", now=NOW)
        assert acked.status == "acknowledged"
        with pytest.raises(service.AlertError, match="only a firing alert"):
            await service.acknowledge(conn=conn, alert_id=alert_id, actor="zhang", now=NOW)
        await service.resolve(conn=conn, alert_id=alert_id, actor="zhang", now=NOW, note="已核查")
        history = await service.alert_history(conn=conn, alert_id=alert_id)
        assert [(h["action"], h["actor"]) for h in history] == [
            ("fired", "system"),
            ("acknowledged", "zhang"),
            ("resolved", "zhang"),
        ]


@pytest.mark.anyio
async def test_profile_overrides_are_typed_checked_and_recorded(settings: Settings) -> None:
    conn, site = await setup(settings, kind="disinfection_plant")
    async with conn:
        result = await tuning.update(
            conn=conn,
            actor="chief",
            site_id=site,
            device_id=None,
            assignments=["steam.min_hold_s=900"],
        )
        assert result["effective"]["steam.min_hold_s"] == 900.0
        await tuning.update(
            conn=conn,
            actor="chief",
            site_id=site,
            device_id="dev-1",
            assignments=["steam.min_temp_c=105"],
        )
        shown = await tuning.effective(conn=conn, site_id=site)
        assert shown["device_overrides"] == {"dev-1": {"steam.min_temp_c": 105.0}}
        assert [(c["key"], c["new_value"]) for c in shown["changes"]] == [
            ("steam.min_hold_s", 900.0),
            ("steam.min_temp_c", 105.0),
        ]
        with pytest.raises(tuning.ProfileError, match="unknown setting"):
            await tuning.update(
                conn=conn,
                actor="x",
                site_id=site,
                device_id=None,
                assignments=["waste.max_storage_h=1"],
            )
        with pytest.raises(tuning.ProfileError, match="is a number"):
            await tuning.update(
                conn=conn,
                actor="x",
                site_id=site,
                device_id=None,
                assignments=["steam.min_hold_s=long"],
            )
        reset = await tuning.update(
            conn=conn,
            actor="chief",
            site_id=site,
            device_id=None,
            assignments=["steam.min_hold_s=default"],
        )
        assert reset["site_overrides"] == {}


def test_a_silent_site_raises_one_site_alert_instead_of_one_per_device() -> None:
    def offline(device: str, state: str) -> Finding:
        return Finding(
            rule="device.offline",
            site_id="s1",
            device_id=device,
            state=state,  # type: ignore[arg-type]
            severity=Severity.WARNING,
            started_at=NOW,
            evidence_to=NOW,
            summary="离线",
            episode=f"{device}@x",
        )

    folded = service.fold_silent_sites(
        [
            offline("a", "firing"),
            offline("b", "firing"),
            finding("s1", "waste.bag_missing", episode="b1"),
        ]
    )
    assert [(f.rule, f.device_id, f.state) for f in folded] == [
        ("waste.bag_missing", "dev-1", "firing"),
        ("device.offline", None, "firing"),
    ]
    back = service.fold_silent_sites([offline("a", "clear"), offline("b", "firing")])
    assert ("device.offline", None, "clear") in [(f.rule, f.device_id, f.state) for f in back]
    assert ("device.offline", "b", "firing") in [(f.rule, f.device_id, f.state) for f in back]
    single = service.fold_silent_sites([offline("a", "firing")])
    assert [(f.device_id, f.state) for f in single] == [("a", "firing")]


def basket(site_id: str, n: int, at: datetime, *, state: str = "firing") -> Finding:
    """A closed chlorine immersion (one episode per basket)."""
    return Finding(
        rule="disinfection.chlorine_low",
        site_id=site_id,
        device_id="dev-1",
        state=state,  # type: ignore[arg-type]
        started_at=at - timedelta(minutes=7),
        ended_at=at,
        evidence_to=at,
        episode=f"K{n}@{at.isoformat()}",
        summary=f"basket {n}",
    )


@pytest.mark.anyio
async def test_bad_episodes_in_a_row_are_one_alert_with_occurrences(settings: Settings) -> None:
    conn, site = await setup(settings, kind="disinfection_plant")
    async with conn:
        kinds = []
        for n in range(4):
            at = NOW + timedelta(minutes=8 * n)
            changes = await service.apply_findings(
                conn=conn, findings=[basket(site, n, at)], now=at
            )
            kinds += [c.kind for c in changes]
        assert kinds == ["fired"]
        (alert,) = await service.list_alerts(conn=conn)
        assert alert.occurrences == 4
        rows = await repository.detections(conn=conn)
        assert [(r["rule"], r["occurrences"], r["reopened"]) for r in rows] == [
            ("disinfection.chlorine_low", 4, 0)
        ]


@pytest.mark.anyio
async def test_a_bad_episode_soon_after_the_clear_reopens_the_alert(settings: Settings) -> None:
    conn, site = await setup(settings, kind="disinfection_plant")
    async with conn:
        first = await service.apply_findings(conn=conn, findings=[basket(site, 1, NOW)], now=NOW)
        ok = NOW + timedelta(minutes=10)
        resolved = await service.apply_findings(
            conn=conn, findings=[basket(site, 2, ok, state="clear")], now=ok
        )
        assert [c.kind for c in resolved] == ["resolved"]
        # Another bad basket within REOPEN_WITHIN of the last violation: the same incident.
        again = NOW + service.REOPEN_WITHIN - timedelta(minutes=1)
        reopened = await service.apply_findings(
            conn=conn,
            findings=[replace(basket(site, 3, again), severity=Severity.CRITICAL)],
            now=again,
        )
        assert [(c.kind, c.alert_id, c.severity) for c in reopened] == [
            ("reopened", first[0].alert_id, Severity.CRITICAL)
        ]
        (alert,) = await service.list_alerts(conn=conn)
        assert (alert.status, alert.occurrences, alert.resolved_at) == ("firing", 2, None)
        history = await service.alert_history(conn=conn, alert_id=alert.id)
        assert [h["action"] for h in history] == ["fired", "resolved", "reopened"]
        rows = await repository.detections(conn=conn)
        assert [(r["first_detected_at"], r["severity"], r["reopened"]) for r in rows] == [
            (NOW, "critical", 1)
        ]


@pytest.mark.anyio
async def test_a_bad_episode_long_after_the_clear_is_a_new_alert(settings: Settings) -> None:
    conn, site = await setup(settings, kind="disinfection_plant")
    async with conn:
        await service.apply_findings(conn=conn, findings=[basket(site, 1, NOW)], now=NOW)
        ok = NOW + timedelta(minutes=10)
        await service.apply_findings(
            conn=conn, findings=[basket(site, 2, ok, state="clear")], now=ok
        )
        later = NOW + service.REOPEN_WITHIN + timedelta(minutes=8)
        changes = await service.apply_findings(
            conn=conn, findings=[basket(site, 3, later)], now=later
        )
        assert [c.kind for c in changes] == ["fired"]
        assert len(await repository.detections(conn=conn)) == 2


@pytest.mark.anyio
async def test_an_old_violation_renamed_is_not_news(settings: Settings) -> None:
    conn, site = await setup(settings, kind="disinfection_plant")
    async with conn:
        await service.apply_findings(conn=conn, findings=[basket(site, 1, NOW)], now=NOW)
        ok = NOW + timedelta(minutes=10)
        await service.apply_findings(
            conn=conn, findings=[basket(site, 2, ok, state="clear")], now=ok
        )
        # The same spell seen again once the data window starts inside it: another name, the
        # same end. Neither a new alert nor a reopening.
        later = NOW + timedelta(hours=3)
        renamed = replace(basket(site, 1, NOW), episode="K1@before:2026-11-23")
        for _ in range(2):
            assert await service.apply_findings(conn=conn, findings=[renamed], now=later) == []
        (alert,) = await service.list_alerts(conn=conn)
        assert alert.status == "resolved"


@pytest.mark.anyio
async def test_an_alert_resolved_by_a_person_is_not_reopened(settings: Settings) -> None:
    conn, site = await setup(settings, kind="disinfection_plant")
    async with conn:
        first = await service.apply_findings(conn=conn, findings=[basket(site, 1, NOW)], now=NOW)
        await service.resolve(conn=conn, alert_id=first[0].alert_id, actor="zhang", now=NOW)
        soon = NOW + timedelta(minutes=8)
        changes = await service.apply_findings(
            conn=conn, findings=[basket(site, 2, soon)], now=soon
        )
        assert [c.kind for c in changes] == ["fired"]
        assert changes[0].alert_id != first[0].alert_id


@pytest.mark.anyio
async def test_a_silent_site_mutes_its_devices_offline_and_data_alerts(
    settings: Settings,
) -> None:
    conn, site = await setup(settings, kind="disinfection_plant")
    async with conn:
        await devices_repo.insert_device(
            conn=conn,
            device_id="dev-2",
            site_id=site,
            kind="dish_machine",
            name=None,
            interval_s=10,
        )

        def offline(device: str, state: str = "firing", at: datetime = NOW) -> Finding:
            return Finding(
                rule="device.offline",
                site_id=site,
                device_id=device,
                state=state,  # type: ignore[arg-type]
                severity=Severity.WARNING,
                started_at=NOW - timedelta(minutes=10),
                evidence_to=at,
                episode=f"{device}@silent",
                summary="离线",
            )

        both = await service.apply_findings(
            conn=conn, findings=[offline("dev-1"), offline("dev-2")], now=NOW
        )
        assert [(c.kind, c.device_id) for c in both] == [("fired", None)]
        # While the site-level alert is active, a device's own offline finding (e.g. one whose
        # Last Will came later, or a site whose other device's finding is missing this run)
        # and its data rules stay muted.
        later = NOW + timedelta(minutes=5)
        gap = replace(finding(site, "data.sequence_gap", episode="g1", at=later), device_id="dev-2")
        muted = await service.apply_findings(
            conn=conn, findings=[offline("dev-1", at=later), gap], now=later
        )
        assert muted == []
        # Once a device is heard again, the site alert clears and the other device, still
        # silent, gets its own alert.
        back = NOW + timedelta(minutes=10)
        changes = await service.apply_findings(
            conn=conn,
            findings=[offline("dev-1", "clear", at=back), offline("dev-2", at=back)],
            now=back,
        )
        assert sorted((c.kind, c.device_id or "-") for c in changes) == [
            ("fired", "dev-2"),
            ("resolved", "-"),
        ]


@pytest.mark.anyio
async def test_a_spell_that_went_on_and_is_later_renamed_is_not_news(settings: Settings) -> None:
    conn, site = await setup(settings, kind="disinfection_plant")
    rule = "disinfection.exposure_short"

    def spell(end: datetime | None, seen: datetime, episode: str = "speed@06:00") -> Finding:
        return Finding(
            rule=rule,
            site_id=site,
            device_id="dev-1",
            state="firing",
            started_at=NOW,
            ended_at=end,
            evidence_to=end or seen,
            episode=episode,
            summary="fast",
        )

    async with conn:
        await service.apply_findings(conn=conn, findings=[spell(None, NOW)], now=NOW)
        # The spell went on past the scan that saw it open, then ended.
        end = NOW + timedelta(minutes=7)
        later = NOW + timedelta(minutes=10)
        ok = replace(spell(None, later), state="clear", evidence_to=later, ended_at=later)
        await service.apply_findings(conn=conn, findings=[spell(end, later), ok], now=later)
        (alert,) = await service.list_alerts(conn=conn)
        assert (alert.status, alert.last_seen_at) == ("resolved", end)
        # Hours later the window starts inside the spell: another name, nothing new.
        renamed = spell(end, NOW + timedelta(hours=3), episode="speed@before:2026-11-23")
        assert (
            await service.apply_findings(
                conn=conn, findings=[renamed], now=NOW + timedelta(hours=3)
            )
            == []
        )


@pytest.mark.anyio
async def test_the_latest_clear_of_a_run_resolves_even_with_older_ones_beside_it(
    settings: Settings,
) -> None:
    # One run over a window holding a good basket, the bad one, then another good one: the
    # window's latest evidence is compliant, whatever came before the violation.
    conn, site = await setup(settings, kind="disinfection_plant")
    async with conn:
        bad = basket(site, 2, NOW)
        await service.apply_findings(conn=conn, findings=[bad], now=NOW)
        later = NOW + timedelta(minutes=20)
        window = [
            basket(site, 1, NOW - timedelta(minutes=10), state="clear"),
            bad,
            basket(site, 3, later, state="clear"),
        ]
        changes = await service.apply_findings(conn=conn, findings=window, now=later)
        assert [c.kind for c in changes] == ["resolved"]


@pytest.mark.anyio
async def test_a_violation_during_a_maintenance_window_stays_muted_after_it(
    settings: Settings,
) -> None:
    conn, site = await setup(settings, kind="disinfection_plant")
    async with conn:
        await service.add_silence(
            conn=conn,
            site_id=site,
            device_id=None,
            rule=None,
            starts_at=NOW - timedelta(hours=1),
            ends_at=NOW + timedelta(minutes=30),
            reason="检修",
            actor="admin",
        )
        during = basket(site, 1, NOW)
        after = NOW + timedelta(hours=1)
        # Judged again once the window is over (it is still in the data window): muted.
        assert await service.apply_findings(conn=conn, findings=[during], now=after) == []
        # A violation after the window raises as usual.
        changes = await service.apply_findings(
            conn=conn, findings=[basket(site, 2, after)], now=after
        )
        assert [c.kind for c in changes] == ["fired"]
