"""`make demo`: a small simulated city on the real pipeline, with the wall URL and a login.

The demo scenario starts early this morning (local time), so its first violations have already
happened when the platform starts: the simulated devices send what they measured since then,
the detectors judge it within seconds, and from then on the sites run in real time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from weijian.config import Settings
from weijian.db.connection import connect
from weijian.db.migrate import migrate
from weijian.simulator.engine import Simulation
from weijian.simulator.live import run_following_clock
from weijian.simulator.platform import RegistryProvisioner
from weijian.simulator.publisher import MqttPublisher
from weijian.simulator.scenario import Scenario, load_scenario
from weijian.users import service as users
from weijian.users.models import Role, UserCreate

log = logging.getLogger(__name__)

LOCAL = ZoneInfo("Asia/Shanghai")
ADMIN = "admin"
INSPECTOR_NAMES = ("王磊", "李娜", "张伟", "刘洋", "陈静", "赵敏")


@dataclass(frozen=True)
class DemoLogin:
    username: str
    password: str


def demo_start(now: datetime, hour: int = 4, lead: timedelta = timedelta(hours=5)) -> datetime:
    """The latest local `hour`:00 at least `lead` before now (so a morning of data is replayed)."""
    local = now.astimezone(LOCAL)
    start = local.replace(hour=hour, minute=0, second=0, microsecond=0)
    while now - start < lead:
        start -= timedelta(days=1)
    return start


def prepare_scenario(path: Path, now: datetime) -> Scenario:
    """The demo scenario, moved to start this morning and to keep running for two days."""
    scenario = load_scenario(path)
    return scenario.model_copy(update={"start": demo_start(now), "duration": timedelta(days=2)})


def load_login(secret_file: Path) -> DemoLogin:
    """The demo admin's login: kept in `secret_file` (0600) so re-runs print the same one."""
    if secret_file.exists():
        return DemoLogin(**json.loads(secret_file.read_text()))
    login = DemoLogin(ADMIN, secrets.token_urlsafe(9))
    secret_file.parent.mkdir(parents=True, exist_ok=True)
    secret_file.write_text(json.dumps(login.__dict__))
    secret_file.chmod(0o600)
    return login


async def ensure_people(settings: Settings, scenario: Scenario, login: DemoLogin) -> None:
    """The admin and two inspectors per district of the scenario."""
    conn = await connect(settings.database_url)
    async with conn:
        if await users.get_user(conn=conn, username=login.username) is None:
            await users.add_user(
                conn=conn,
                new=UserCreate(
                    username=login.username,
                    name="监督所管理员",
                    role=Role.ADMIN,
                    password=login.password,
                ),
            )
        districts = sorted({site.district for site in scenario.sites})
        names = iter(INSPECTOR_NAMES * 4)
        for d, district in enumerate(districts):
            for i in range(2):
                username = f"inspector{d + 1}{i + 1}"
                if await users.get_user(conn=conn, username=username) is None:
                    await users.add_user(
                        conn=conn,
                        new=UserCreate(
                            username=username,
                            name=next(names),
                            role=Role.INSPECTOR,
                            password=f"{username}-demo",
                            district=district,
                            phone=f"139{d + 1:04d}{i + 1:04d}",
                        ),
                    )


def run_demo(settings: Settings, scenario_path: Path, run_dir: Path) -> None:
    """Provision the demo city, then run the platform and the simulator until Ctrl-C."""
    from weijian.runtime import Stages, run

    migrate(settings.database_url)
    now = datetime.now(UTC)
    scenario = prepare_scenario(scenario_path, now)
    login = load_login(run_dir / "demo-admin.json")
    asyncio.run(ensure_people(settings, scenario, login))
    credentials = RegistryProvisioner(settings, phones=["13800138000"]).provision(scenario)
    stop = threading.Event()

    def simulate() -> None:
        try:
            run_following_clock(
                Simulation(scenario, step=timedelta(seconds=5), progress=False),
                MqttPublisher(credentials),
                stop=stop.is_set,
            )
        except Exception:
            log.exception("the simulator stopped")

    base = f"http://127.0.0.1:{settings.http_port}"
    banner = (
        "\n"
        f"  Weijian demo: {len(scenario.sites)} sites, {len(credentials)} simulated devices,\n"
        f"  replaying since {scenario.start.astimezone(LOCAL):%m-%d %H:%M} (Asia/Shanghai),"
        " then live.\n"
        f"  wall:   {base}/wall\n"
        f"  phone:  {base}/m   (inspector11 / inspector11-demo)\n"
        f"  login:  {login.username} / {login.password}\n"
        "  Ctrl-C stops it.\n"
    )

    async def main() -> None:
        ready = asyncio.Event()
        platform = asyncio.create_task(run(settings, Stages(scan_interval_s=15), ready=ready))
        await ready.wait()
        print(banner, flush=True)
        simulator = asyncio.create_task(asyncio.to_thread(simulate))
        try:
            await platform
        finally:
            stop.set()
            await simulator

    asyncio.run(main())
