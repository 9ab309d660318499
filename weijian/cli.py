"""The `weijian` command line (docs/operations.md). Every mistake is a one-line error, exit 1."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import orjson
import psycopg
import typer
from pydantic import ValidationError

from weijian.config import Settings, get_settings

T = TypeVar("T")
_C = TypeVar("_C")

app = typer.Typer(
    help="Weijian (卫监): online monitoring for a health-supervision bureau.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
sites_app = typer.Typer(
    help="Supervised units (餐饮具集中消毒单位, 医疗机构).", no_args_is_help=True
)
devices_app = typer.Typer(help="Devices and their MQTT credentials.", no_args_is_help=True)
users_app = typer.Typer(
    help="Platform users: admin, supervisor, inspector, operator.", no_args_is_help=True
)
app.add_typer(sites_app, name="sites")
app.add_typer(devices_app, name="devices")
profiles_app = typer.Typer(
    help="Limits in force per site and device (site profiles).", no_args_is_help=True
)
silences_app = typer.Typer(help="Maintenance windows that mute alerts.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(profiles_app, name="profiles")
app.add_typer(silences_app, name="silences")


class CliError(Exception):
    """A mistake to report on one line."""


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CliError(
            f"configuration: {first['msg']} ({'.'.join(map(str, first['loc'])) or 'settings'})"
        ) from None


def _print_json(value: Any) -> None:
    sys.stdout.write(
        orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n"
    )


def _run(coro_factory: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coro_factory()

    return asyncio.run(main())


def _prometheus_multiprocess(workers: int) -> None:
    """Several worker processes share one /metrics through prometheus' multiprocess mode.

    Must run before prometheus_client is imported anywhere in this process.
    """
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="weijian-metrics-")


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


async def _with_conn(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from weijian.db.connection import connect

    conn = await connect(settings.database_url)
    async with conn, conn.transaction():
        return await work(conn)


# -- platform ------------------------------------------------------------------------------


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (idempotent)."""
    from weijian.db.migrate import migrate as run_migrations

    settings = _settings()
    applied = run_migrations(settings.database_url)
    typer.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


@app.command()
def up(
    scan_interval: Annotated[
        float, typer.Option(help="Seconds between scheduled detector scans.")
    ] = 30.0,
) -> None:
    """Run everything in one process: migrate, ingest, detectors, alerts, tasks, notify, api."""
    settings = _settings()
    _prometheus_multiprocess(max(settings.ingest_workers, settings.detect_workers))
    from weijian.runtime import Stages, run

    _logging(settings.log_level)
    typer.echo(
        f"weijian: wall at http://127.0.0.1:{settings.http_port}/wall, "
        f"broker {settings.mqtt.public_url}, database {settings.database_url.rsplit('@', 1)[-1]}"
    )
    asyncio.run(run(settings, Stages(scan_interval_s=scan_interval)))


@app.command()
def ingest(workers: Annotated[int, typer.Option(min=1, max=64)] = 1) -> None:
    """Run only the ingest stage (scale out with several processes on a shared subscription)."""
    settings = _settings().model_copy(update={"ingest_workers": workers})
    _prometheus_multiprocess(workers)
    from weijian.runtime import Stages, run

    _logging(settings.log_level)
    asyncio.run(run(settings, Stages(api=False, detectors=False, notify=False)))


@app.command()
def detect(
    shard: Annotated[
        str | None,
        typer.Option(
            help="Judge only shard I of N (I/N, 0-based): run one such process per shard,"
            " on any machines. Without it: every site, over WEIJIAN_DETECT_WORKERS processes.",
            metavar="I/N",
        ),
    ] = None,
    scan_interval: Annotated[
        float, typer.Option(help="Seconds between scheduled detector scans.")
    ] = 30.0,
) -> None:
    """Run only the detectors, alerts, tasks and notifications (scale out by site shard)."""
    from weijian.alerts.shards import Shard

    try:
        part = None if shard is None else Shard.parse(shard)
    except ValueError as exc:
        raise CliError(f"--shard: {exc}") from exc
    settings = _settings()
    if part is None:
        _prometheus_multiprocess(settings.detect_workers)
    from weijian.runtime import Stages, run

    _logging(settings.log_level)
    stages = Stages(api=False, ingest=False, shard=part, scan_interval_s=scan_interval)
    asyncio.run(run(settings, stages))


@app.command()
def api() -> None:
    """Run only the HTTP API and the wall."""
    from weijian.runtime import Stages, run

    settings = _settings()
    _logging(settings.log_level)
    asyncio.run(run(settings, Stages(ingest=False, detectors=False, notify=False)))


@app.command()
def retention(
    readings_days: Annotated[int, typer.Option(min=8, help="Keep readings this many days.")] = 400,
    events_days: Annotated[
        int, typer.Option(min=1098, help="Keep events (waste movements) this many days.")
    ] = 1128,
    dead_letter_days: Annotated[
        int, typer.Option(min=1, help="Keep dead letters this many days.")
    ] = 90,
) -> None:
    """Drop time-series chunks and dead letters older than the retention policy."""
    from datetime import timedelta

    from weijian.db import retention as ret

    policy = ret.RetentionPolicy(
        readings=timedelta(days=readings_days),
        events=timedelta(days=events_days),
        dead_letters=timedelta(days=dead_letter_days),
    )
    result = _run(lambda: _with_conn(_settings(), lambda conn: ret.apply(conn=conn, policy=policy)))
    _print_json(
        {
            "readings_chunks_dropped": result.readings_chunks,
            "events_chunks_dropped": result.events_chunks,
            "dead_letters_deleted": result.dead_letters,
        }
    )


# -- registry ------------------------------------------------------------------------------


@sites_app.command("add")
def sites_add(
    name: Annotated[str, typer.Option(help="Name of the unit, e.g. 城东餐具消毒中心.")],
    kind: Annotated[str, typer.Option(help="disinfection_plant or medical_institution.")],
    district: Annotated[str, typer.Option(help="District (inspectors are drawn from its roster).")],
    phone: Annotated[list[str], typer.Option(help="Contact phone for alert SMS (repeatable).")],
    address: Annotated[str | None, typer.Option()] = None,
    lat: Annotated[float | None, typer.Option()] = None,
    lon: Annotated[float | None, typer.Option()] = None,
    site_id: Annotated[
        str | None, typer.Option("--id", help="Site id (generated if omitted).")
    ] = None,
) -> None:
    """Register a supervised unit; prints it as JSON."""
    from weijian.devices import service
    from weijian.devices.models import SiteCreate

    new = SiteCreate(
        id=site_id,
        name=name,
        kind=kind,
        district=district,
        phones=phone,
        address=address,
        lat=lat,
        lon=lon,
    )
    site = _run(lambda: _with_conn(_settings(), lambda conn: service.add_site(conn=conn, new=new)))
    _print_json(site.model_dump(mode="json"))


@sites_app.command("list")
def sites_list(district: Annotated[str | None, typer.Option()] = None) -> None:
    """List registered sites as JSON."""
    from weijian.devices import service

    sites = _run(
        lambda: _with_conn(
            _settings(), lambda conn: service.list_sites(conn=conn, district=district)
        )
    )
    _print_json([s.model_dump(mode="json") for s in sites])


@devices_app.command("add")
def devices_add(
    site: Annotated[str, typer.Option(help="Site id the device belongs to.")],
    kind: Annotated[str, typer.Option(help="Device kind, e.g. steam_cabinet.")],
    name: Annotated[str | None, typer.Option()] = None,
    device_id: Annotated[
        str | None, typer.Option("--id", help="Device id (generated if omitted).")
    ] = None,
    interval: Annotated[int | None, typer.Option(help="Reporting interval in seconds.")] = None,
) -> None:
    """Register a device and issue its MQTT credentials; prints them once, as JSON."""
    from weijian.devices import service
    from weijian.devices.broker import DynamicSecurity
    from weijian.devices.kinds import kind_spec
    from weijian.devices.models import DeviceCreate

    settings = _settings()
    kind_spec(kind)
    new = DeviceCreate(id=device_id, site_id=site, kind=kind, name=name, interval_s=interval)
    store = DynamicSecurity(settings.mqtt, settings.mqtt_topic_root)

    async def work(conn: Any) -> Any:
        _, credentials = await service.add_device(
            conn=conn,
            new=new,
            store=store,
            topic_root=settings.mqtt_topic_root,
            broker_url=settings.broker_public_url,
        )
        return credentials

    _print_json(_run(lambda: _with_conn(settings, work)).model_dump(mode="json"))


@devices_app.command("list")
def devices_list(
    site: Annotated[str | None, typer.Option(help="Only this site's devices.")] = None,
) -> None:
    """List registered devices (with presence) as JSON."""
    from weijian.devices import service

    devices = _run(
        lambda: _with_conn(_settings(), lambda conn: service.list_devices(conn=conn, site_id=site))
    )
    _print_json([d.model_dump(mode="json") for d in devices])


@devices_app.command("rotate")
def devices_rotate(
    device_id: Annotated[str, typer.Argument(help="The device whose password to replace.")],
) -> None:
    """Issue a new MQTT password for a device (its open sessions are closed); prints it once."""
    from weijian.devices import service
    from weijian.devices.broker import DynamicSecurity

    settings = _settings()
    store = DynamicSecurity(settings.mqtt, settings.mqtt_topic_root)
    credentials = _run(
        lambda: _with_conn(
            settings,
            lambda conn: service.rotate_credentials(
                conn=conn,
                device_id=device_id,
                store=store,
                topic_root=settings.mqtt_topic_root,
                broker_url=settings.broker_public_url,
            ),
        )
    )
    _print_json(credentials.model_dump(mode="json"))


@users_app.command("add")
def users_add(
    role: Annotated[str, typer.Option(help="admin, supervisor, inspector or operator.")],
    name: Annotated[str, typer.Option(help="Full name, e.g. 张伟.")],
    password: Annotated[str, typer.Option(help="At least 8 characters; only a hash is stored.")],
    username: Annotated[
        str | None, typer.Option(help="Login name (defaults to the phone number).")
    ] = None,
    district: Annotated[
        str | None, typer.Option(help="District (required for inspectors).")
    ] = None,
    phone: Annotated[str | None, typer.Option(help="Mobile number for SMS.")] = None,
    site: Annotated[list[str] | None, typer.Option(help="Operator's site (repeatable).")] = None,
) -> None:
    """Register a user; prints it as JSON (without the password)."""
    from weijian.users import service
    from weijian.users.models import UserCreate

    login = username or phone
    if not login:
        raise CliError("give --username (or --phone, used as the login name)")
    new = UserCreate(
        username=login,
        name=name,
        role=role,
        password=password,
        district=district,
        phone=phone,
        site_ids=site or [],
    )
    user = _run(lambda: _with_conn(_settings(), lambda conn: service.add_user(conn=conn, new=new)))
    _print_json(user.model_dump(mode="json"))


@users_app.command("list")
def users_list(role: Annotated[str | None, typer.Option()] = None) -> None:
    """List users as JSON."""
    from weijian.users import service

    users = _run(
        lambda: _with_conn(_settings(), lambda conn: service.list_users(conn=conn, role=role))
    )
    _print_json([u.model_dump(mode="json") for u in users])


@profiles_app.command("show")
def profiles_show(site_id: Annotated[str, typer.Argument(help="Site id.")]) -> None:
    """Defaults, overrides and the change record of a site's limits, as JSON."""
    from weijian.alerts import tuning

    result = _run(
        lambda: _with_conn(_settings(), lambda conn: tuning.effective(conn=conn, site_id=site_id))
    )
    _print_json(result)


@profiles_app.command("set")
def profiles_set(
    site_id: Annotated[str, typer.Argument(help="Site id.")],
    assignments: Annotated[
        list[str], typer.Argument(help="key=value (value 'default' removes an override).")
    ],
    device: Annotated[str | None, typer.Option(help="Override for this device only.")] = None,
    actor: Annotated[str, typer.Option(help="Who makes the change (recorded).")] = "cli",
) -> None:
    """Override limits of a site (or one device); every change is recorded."""
    from weijian.alerts import tuning

    result = _run(
        lambda: _with_conn(
            _settings(),
            lambda conn: tuning.update(
                conn=conn, actor=actor, site_id=site_id, device_id=device, assignments=assignments
            ),
        )
    )
    _print_json({k: result[k] for k in ("site_id", "site_overrides", "device_overrides")})


@silences_app.command("add")
def silences_add(
    reason: Annotated[str, typer.Option(help="Why, e.g. 设备检修.")],
    hours: Annotated[float, typer.Option(min=0.01, help="Length of the window from now.")] = 2.0,
    site: Annotated[str | None, typer.Option()] = None,
    device: Annotated[str | None, typer.Option()] = None,
    rule: Annotated[str | None, typer.Option()] = None,
    actor: Annotated[str, typer.Option()] = "cli",
) -> None:
    """Mute alerts of a site, device and/or rule for a maintenance window."""
    from datetime import UTC, datetime, timedelta

    from weijian.alerts import service
    from weijian.alerts.rules import rule as rule_spec

    if site is None and device is None and rule is None:
        raise CliError("a silence needs a scope: --site, --device and/or --rule")
    if rule is not None:
        rule_spec(rule)
    start = datetime.now(UTC)
    silence_id = _run(
        lambda: _with_conn(
            _settings(),
            lambda conn: service.add_silence(
                conn=conn,
                site_id=site,
                device_id=device,
                rule=rule,
                starts_at=start,
                ends_at=start + timedelta(hours=hours),
                reason=reason,
                actor=actor,
            ),
        )
    )
    _print_json(
        {
            "id": silence_id,
            "site_id": site,
            "device_id": device,
            "rule": rule,
            "ends_at": (start + timedelta(hours=hours)).isoformat(),
        }
    )


def _parse_start(text: str | None) -> Any:
    """`now`, a negative offset like `-30m`/`-2h`, or an ISO time with offset."""
    from datetime import UTC, datetime, timedelta

    if text is None:
        return None
    now = datetime.now(UTC).replace(microsecond=0)
    if text == "now":
        return now
    if text.startswith("-") and text[-1] in "smhd" and text[1:-1].isdigit():
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[text[-1]]
        return now - timedelta(**{unit: int(text[1:-1])})
    start = datetime.fromisoformat(text)
    if start.tzinfo is None:
        raise CliError(f"--start {text!r} needs a UTC offset, e.g. 2026-11-23T08:00:00+08:00")
    return start


@app.command()
def simulate(
    scenario: Annotated[
        str | None, typer.Option(help="Scenario file (see docs/simulator.md).")
    ] = None,
    plants: Annotated[
        int | None, typer.Option(min=1, help="Simulate N steam-cabinet plants instead.")
    ] = None,
    fault: Annotated[
        str | None, typer.Option(help="With --plants: a fault on plant 1, e.g. under_temp.")
    ] = None,
    speed: Annotated[
        float | None, typer.Option(min=0.001, help="Accelerate ×N (device clocks run ahead).")
    ] = None,
    fast: Annotated[bool, typer.Option("--fast", help="As fast as possible.")] = False,
    start: Annotated[
        str | None, typer.Option(help="Override the start: now, -30m, -2h or ISO time.")
    ] = None,
    hours: Annotated[float, typer.Option(min=0.01, help="With --plants: how long to run.")] = 24.0,
    shared_account: Annotated[
        bool, typer.Option(help="Publish through the platform account.")
    ] = False,
) -> None:
    """Run simulated sites against the broker, each device with its own credentials.

    By default it runs in real time: a start in the past is caught up at once, then it follows
    the clock (Ctrl-C stops it).
    """
    from datetime import timedelta

    from weijian.simulator import MqttPublisher, Simulation, load_scenario
    from weijian.simulator.live import plants_scenario, run_following_clock
    from weijian.simulator.platform import RegistryProvisioner

    if (scenario is None) == (plants is None):
        raise CliError("give either --scenario FILE or --plants N")
    if fault is not None and plants is None:
        raise CliError("--fault goes with --plants; a scenario file lists its own faults")
    settings = _settings()
    _logging(settings.log_level)
    first = _parse_start(start)
    if plants is not None:
        chosen = plants_scenario(
            plants,
            fault=fault,
            start=first or _parse_start("-25m"),
            duration=timedelta(hours=hours),
        )
    else:
        chosen = load_scenario(scenario or "")
        if first is not None:
            chosen = chosen.model_copy(update={"start": first})
    credentials = RegistryProvisioner(settings, own_credentials=not shared_account).provision(
        chosen
    )
    sink = MqttPublisher(credentials)
    devices = len(credentials)
    typer.echo(
        f"simulating {chosen.name}: {len(chosen.sites)} sites, {devices} devices, "
        f"from {chosen.start.isoformat()} for {chosen.end - chosen.start}",
        err=True,
    )
    if fast or speed is not None:
        stats = Simulation(chosen, sink=sink, speed=None if fast else speed).run()
        typer.echo(f"sent {stats.messages} messages in {stats.wall_s:.1f} s", err=True)
        return
    live = run_following_clock(Simulation(chosen, step=timedelta(seconds=5), progress=False), sink)
    typer.echo(f"sent {live.messages} messages", err=True)


@app.command()
def demo(
    scenario: Annotated[str, typer.Option(help="The demo scenario.")] = "scenarios/demo.yaml",
) -> None:
    """A small simulated city on the real pipeline: prints the wall URL and an admin login."""
    from pathlib import Path

    from weijian.simulator.demo import run_demo

    settings = _settings()
    _logging(settings.log_level)
    path = Path(scenario)
    if not path.exists():
        raise CliError(f"no scenario file {scenario} (run `make demo` from the repository)")
    run_demo(settings, path, Path(".run"))


@app.command("eval")
def eval_(
    paths: Annotated[list[str], typer.Argument(help="Scenario files or folders of *.yaml.")],
    step: Annotated[
        float,
        typer.Option(
            min=1,
            help="Simulated seconds per publishing step; the stream judges each step's data"
            " (10 s: the shortest reporting interval).",
        ),
    ] = 10,
    scan: Annotated[
        float,
        typer.Option(
            min=1,
            help="Simulated seconds between detector scans (live: 30 s after a scan ends).",
        ),
    ] = 60,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    keep: Annotated[bool, typer.Option(help="Keep each scenario's database.")] = False,
    jobs: Annotated[
        int, typer.Option(min=1, max=16, help="Scenarios evaluated at once (processes).")
    ] = 1,
    parts: Annotated[
        int,
        typer.Option(
            min=1,
            max=16,
            help="Evaluate each scenario as this many scenarios over disjoint sets of its sites"
            " (run at once with --jobs), merged into one result: a long city scenario on"
            " several cores.",
        ),
    ] = 1,
    save: Annotated[
        str | None,
        typer.Option(
            help="Write each scenario's scores, misses and false alerts to DIR/<name>.json"
            " as soon as it finishes (a stopped run keeps them). With --parts, each finished"
            " part is kept there too and the same command run again takes it from there.",
            metavar="DIR",
        ),
    ] = None,
) -> None:
    """Run labelled scenarios through broker, ingest, detectors and alerts; score detection."""
    from datetime import timedelta

    from rich.console import Console

    from weijian.simulator import load_scenarios, match, render_table, to_dict
    from weijian.simulator.evaluate import PartStore, ScenarioResult, evaluate_paths

    settings = _settings()
    _logging("WARNING" if as_json else settings.log_level)
    scenarios = [item for path in paths for item in load_scenarios(path)]
    if not scenarios:
        raise CliError(f"no scenarios in {' '.join(paths)}")
    from pathlib import Path

    save_dir = None if save is None else Path(save)
    if save_dir is not None:
        try:
            save_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CliError(f"cannot write results to {save}: {exc.strerror}") from exc
    from weijian.signals import sigterm_interrupts

    def summary(r: ScenarioResult, *, full: bool = False) -> dict[str, Any]:
        scored = to_dict(
            match(r.labels, r.alerts, clean_device_days=r.device_days if r.clean else 0)
        )
        keys = scored.keys() if full else ("overall", "rules", "false_alerts_per_1000_device_days")
        return {
            "scenario": r.scenario.name,
            "messages": r.messages,
            "labels": len(r.labels),
            "alerts": len(r.alerts),
            "device_days": round(r.device_days, 1),
            "wall_s": round(r.wall_s, 1),
            "detection_s": round(r.detection_s, 1),
            # The same matching, for this scenario alone.
            **{k: scored[k] for k in keys},
        }

    def finished(r: ScenarioResult) -> None:
        if save_dir is not None:
            out = save_dir / f"{r.scenario.name}.json"
            data = {"step_s": step, "scan_s": scan, **summary(r, full=True)}
            out.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
            sys.stderr.write(f"eval {r.scenario.name}: saved {out}\n")

    with sigterm_interrupts():  # each scenario's database is dropped when the run is killed
        results = evaluate_paths(
            settings,
            scenarios,
            step=timedelta(seconds=step),
            keep=keep,
            scan=timedelta(seconds=scan),
            jobs=jobs,
            parts=parts,
            on_result=finished,
            store=None if save_dir is None else PartStore(save_dir),
        )
    labels = [label for r in results for label in r.labels]
    alerts = [alert for r in results for alert in r.alerts]
    clean_days = sum(r.device_days for r in results if r.clean)
    evaluation = match(labels, alerts, clean_device_days=clean_days)
    runs = [summary(r) for r in results]
    if as_json:
        _print_json({"step_s": step, "scan_s": scan, "scenarios": runs, **to_dict(evaluation)})
        return
    console = Console()
    for run in runs:
        console.print(
            f"{run['scenario']}: {run['messages']} messages, {run['labels']} labels, "
            f"{run['alerts']} alert raises, {run['wall_s']} s"
        )
    console.print(render_table(evaluation))
    console.print(
        f"false alerts per 1,000 device-days on clean scenarios: "
        f"{evaluation.false_alerts_per_1000_device_days}"
    )


# -- benchmarks ----------------------------------------------------------------------------

bench_app = typer.Typer(
    help="Benchmarks on this machine, as JSON (docs/performance.md).", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")


@bench_app.command("ingest")
def bench_ingest(
    duration: Annotated[
        float, typer.Option(min=1, help="Seconds of full-speed load (sustained part).")
    ] = 60.0,
    latency_duration: Annotated[
        float, typer.Option(min=1, help="Seconds of half-speed load with the latency probe.")
    ] = 30.0,
    devices: Annotated[int, typer.Option(min=1, help="Devices the load publishes as.")] = 2000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Ingest worker processes.")] = 2,
    rate: Annotated[
        float,
        typer.Option(min=0, help="Offered load of the sustained part, messages/s (0: full speed)."),
    ] = 0.0,
    backlog: Annotated[
        int, typer.Option(min=0, help="Messages queued while the ingest is away (0: no backlog).")
    ] = 0,
    skip: Annotated[
        list[str] | None,
        typer.Option(help="Parts to skip: sustained, latency, ceilings, naive, backlog."),
    ] = None,
    keep: Annotated[bool, typer.Option(help="Keep the benchmark's database.")] = False,
) -> None:
    """Ingest throughput, latency, ceilings, naive baseline and backlog drain: one JSON object.

    Runs on its own database and topic root; progress goes to stderr.
    """
    from weijian.bench import BenchConfig, run_ingest_bench

    parts = frozenset(p.strip() for item in skip or [] for p in item.split(",") if p.strip())
    config = BenchConfig(
        devices=devices,
        workers=workers,
        rate=rate,
        duration_s=duration,
        latency_duration_s=latency_duration,
        backlog=backlog,
        skip=parts,
        keep=keep,
    )
    _run_bench(run_ingest_bench, config)


@bench_app.command("alerts")
def bench_alerts(
    sites: Annotated[
        int, typer.Option(min=1, help="Plants of the simulated city (5 devices each).")
    ] = 20,
    duration: Annotated[float, typer.Option(min=1, help="Seconds of measured probing.")] = 60.0,
    probe_interval: Annotated[
        float, typer.Option(min=0.05, help="Seconds between probes (one new alert each).")
    ] = 0.5,
    warmup: Annotated[float, typer.Option(min=0, help="Seconds of probing not counted.")] = 10.0,
    history: Annotated[
        float, typer.Option(min=0, help="Seconds of device history the city sends first.")
    ] = 10800.0,
    detect_workers: Annotated[
        int,
        typer.Option(
            min=1, max=32, help="Detection processes of the platform (WEIJIAN_DETECT_WORKERS)."
        ),
    ] = 1,
    keep: Annotated[bool, typer.Option(help="Keep the benchmark's database.")] = False,
) -> None:
    """Live alert latency: violating reading published → alert committed, under a city.

    Runs `weijian up` on its own database and topic root; progress goes to stderr.
    """
    from weijian.bench.alerts import AlertBenchConfig, run_alert_bench

    config = AlertBenchConfig(
        sites=sites,
        duration_s=duration,
        probe_interval_s=probe_interval,
        warmup_s=warmup,
        history_s=history,
        detect_workers=detect_workers,
        keep=keep,
    )
    _run_bench(run_alert_bench, config)


def _run_bench(
    bench: Callable[[Settings, _C, Callable[[str], None]], dict[str, Any]], config: _C
) -> None:
    """Run a benchmark with progress on stderr and print its report; known failures are one
    line."""
    from weijian.bench import BenchError
    from weijian.simulator.publisher import PublishError
    from weijian.simulator.rawmqtt import RawMqttError

    settings = _settings()
    try:
        report = bench(settings, config, lambda line: typer.echo(f"bench: {line}", err=True))
    except (BenchError, PublishError, RawMqttError) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"broker {settings.mqtt.public_url} unavailable: {exc}") from None
    _print_json(report)


@app.command("score-csv")
def score_csv(
    path: Annotated[str, typer.Argument(help="CSV of timestamp,value rows ('-' for stdin).")],
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Write here, not stdout.")
    ] = None,
    window: Annotated[int, typer.Option(min=10, help="Earlier rows each score looks at.")] = 120,
    threshold: Annotated[
        float, typer.Option(help="Score at or above which a row is flagged.")
    ] = 0.5,
) -> None:
    """Score a univariate series: adds an anomaly score in [0, 1] and a 0/1 flag to each row,
    streaming (each score uses only earlier rows)."""
    from contextlib import ExitStack

    from weijian.alerts.anomaly import score_csv as score

    with ExitStack() as stack:
        source = (
            sys.stdin
            if path == "-"
            else stack.enter_context(open(path, encoding="utf-8", newline=""))
        )
        sink = (
            sys.stdout
            if output is None
            else stack.enter_context(open(output, "w", encoding="utf-8", newline=""))
        )
        rows = score(source, sink, window=window, threshold=threshold)
    if output is not None:
        typer.echo(f"scored {rows} rows into {output}", err=True)


@app.command()
def backtest(
    start: Annotated[str, typer.Option("--from", help="Start (ISO time with offset).")],
    end: Annotated[str, typer.Option("--to", help="End (ISO time with offset).")],
    rule: Annotated[list[str] | None, typer.Option(help="Only these rules (repeatable).")] = None,
    site: Annotated[list[str] | None, typer.Option(help="Only these sites (repeatable).")] = None,
    override: Annotated[
        list[str] | None, typer.Option(help="key=value limit to try instead.")
    ] = None,
    step: Annotated[
        float, typer.Option(min=10, help="Seconds between replayed evaluations.")
    ] = 300,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Replay stored data through the detectors: what would have fired (nothing is written)."""
    from datetime import timedelta

    from weijian.alerts import tuning
    from weijian.alerts.backtest import backtest as replay
    from weijian.alerts.detectors import catalogue
    from weijian.alerts.profiles import DEFAULTS
    from weijian.alerts.rules import rule as rule_spec

    first, last = _parse_start(start), _parse_start(end)
    detectors = catalogue()
    if rule:
        for r in rule:
            rule_spec(r)
        detectors = [d for d in detectors if d.rule.id in rule]
    overrides: dict[str, Any] = {}
    for item in override or []:
        key = item.partition("=")[0].strip()
        kinds = [k for k, defaults in DEFAULTS.items() if key in defaults]
        if not kinds:
            raise CliError(f"unknown setting {key!r} in --override")
        overrides.update(tuning.parse_assignments(kinds[0].value, [item]))
    result = _run(
        lambda: _with_conn(
            _settings(),
            lambda conn: replay(
                conn=conn,
                start=first,
                end=last,
                step=timedelta(seconds=step),
                detectors=detectors,
                site_ids=site,
                overrides=overrides,
            ),
        )
    )
    if as_json:
        _print_json(
            {
                "from": first.isoformat(),
                "to": last.isoformat(),
                "overrides": overrides,
                "counts": result.counts(),
                "alerts": [a.as_dict() for a in result.raised],
            }
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"would have fired {first:%Y-%m-%d %H:%M} → {last:%Y-%m-%d %H:%M}")
    for column in ("time", "rule", "site", "device", "severity", "summary"):
        table.add_column(column)
    for a in result.raised:
        table.add_row(
            f"{a.first_seen:%m-%d %H:%M}",
            a.rule,
            a.site_id,
            a.device_id or "-",
            a.severity,
            a.summary,
        )
    console = Console()
    console.print(table)
    console.print(f"{len(result.raised)} alert(s): {result.counts()}")


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        return f"{where}: {error['msg']}" if where else str(error["msg"])
    if isinstance(exc, psycopg.OperationalError):
        first = str(exc).strip().splitlines()[0]
        return f"database unavailable: {first} (is `make services` running?)"
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def main() -> None:
    """Entry point: run the app, turning known errors into one line on stderr and exit 1."""
    from weijian.db.migrate import MigrationError
    from weijian.devices.broker import BrokerError

    known: tuple[type[BaseException], ...] = (
        CliError,
        ValueError,
        ValidationError,
        BrokerError,
        MigrationError,
        psycopg.Error,
        FileNotFoundError,
        PermissionError,
    )
    try:
        # Not standalone, typer turns Ctrl-C (and an explicit Exit) into a returned exit code.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            if code == 130:
                sys.stderr.write("interrupted\n")
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except known as exc:
        sys.stderr.write(f"error: {_one_line(exc)}\n")
        sys.exit(1)
    except Exception as exc:
        # Usage errors of the command-line parser carry their own message and exit code (2).
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise


if __name__ == "__main__":
    main()
