"""``loyalflow serve-flows``: the deployments built from the shipped config, the CLI, a campaign on Dask.

Prefect only schedules against a real server, so schedules and triggers are checked as built
(what ``serve`` registers); the Dask test runs a real campaign flow with its chunk tasks on an
in-process Dask cluster and reads the cluster's task stream to prove they ran there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import typer
from sqlalchemy.engine import Engine
from sqlmodel import Session
from typer.testing import CliRunner

from flows.serve import (
    MEMBER_LOCAL_CRON,
    OPTIONAL_FLOWS,
    DeploymentSpec,
    TaskRunnerKind,
    build_deployments,
    deployment_specs,
    optional_flows,
)
from loyalty.campaigns import load_campaigns
from loyalty.cli import main_callback
from loyalty.cli_flows import flows_app
from loyalty.models import OUTBOX_MESSAGES
from loyalty.programme import Programme
from loyalty.settings import Settings, load_settings
from loyalty.types import OutboxStatus, utcnow
from tests.conftest import REPO_ROOT
from tests.factories import add_contactable_member

runner = CliRunner()


def _settings(config: Path = REPO_ROOT / "config") -> Settings:
    return load_settings(config_dir=config, templates_dir=REPO_ROOT / "templates")


def _schedule(deployment: Any, index: int = 0) -> Any:
    """The ``index``-th schedule of a deployment (typed loosely: Prefect's schedule union)."""
    return deployment.schedules[index].schedule


def _by_name(specs: list[DeploymentSpec]) -> dict[str, DeploymentSpec]:
    return {spec.name: spec for spec in specs}


def test_one_deployment_per_shipped_campaign_on_its_cron_and_zone(programme: Programme) -> None:
    campaigns = load_campaigns(REPO_ROOT / "config" / "campaigns", programme)
    deployments = {d.name: d for d in build_deployments(_settings(), programme)}
    assert len(campaigns) >= 4
    for name, spec in campaigns.items():
        deployment = deployments[f"campaign-{name}"]
        assert deployment.flow_name == "campaign-run"
        assert deployment.parameters == {"campaign": name}
        assert len(deployment.schedules or []) == 1
        # member_local campaigns (each member's own clock) run daily just after midnight UTC.
        expected = (spec.schedule.cron, spec.schedule.timezone) if spec.schedule.cron else (MEMBER_LOCAL_CRON, "UTC")
        assert (_schedule(deployment).cron, _schedule(deployment).timezone) == expected
    assert (_schedule(deployments["campaign-win_back"]).cron, _schedule(deployments["campaign-win_back"]).timezone
            ) == ("0 11 * * tue", "America/Toronto")


def test_programme_wide_deployments_and_the_tier_upgrade_trigger(programme: Programme) -> None:
    deployments = {d.name: d for d in build_deployments(_settings(), programme, timezone="America/Toronto")}
    maintenance = deployments["nightly-maintenance"]
    assert maintenance.flow_name == "nightly-maintenance"
    assert (_schedule(maintenance).cron, _schedule(maintenance).timezone) == ("0 2 * * *", "America/Toronto")
    assert _schedule(deployments["points-expiring"]).timezone == "America/Toronto"
    tier = deployments["tier-upgrades"]
    assert tier.flow_name == "send-tier-upgrades" and tier.entrypoint == "flows/tier_upgrade.py:send_tier_upgrades"
    assert len(tier.schedules or []) == 1  # the sweeper: the table is the source of truth, not the event
    assert _schedule(tier).interval == timedelta(minutes=1)
    [trigger] = tier.triggers or []
    assert trigger.expect == {"loyalty.member.tier-upgraded"}  # type: ignore[union-attr]
    assert dict(trigger.match.root) == {"prefect.resource.id": "loyalty.member.*"}  # type: ignore[union-attr]
    assert trigger.parameters == {"member_id": "{{ event.resource.id }}"}  # type: ignore[union-attr]
    lifetime = deployments["refit-lifetime"]
    assert lifetime.flow_name == "refit-lifetime" and lifetime.entrypoint == "flows/lifetime.py:refit_lifetime"
    assert (_schedule(lifetime).cron, _schedule(lifetime).timezone) == ("0 3 * * sun", "America/Toronto")
    assert len(deployments) == len(set(deployments))  # names are unique, so serving registers each once


@pytest.mark.parametrize(("name", "flow_name", "cron"), [("attribute-campaigns", "attribute-campaigns", "0 4 * * *"),
                                                          ("train-recommender", "train-recommender", "0 5 * * sun")])
def test_optional_deployments_when_their_modules_exist(programme: Programme, name: str, flow_name: str,
                                                       cron: str) -> None:
    found, missing = optional_flows()
    if name in missing:
        pytest.skip(f"{name} not built yet: {missing[name]}")
    deployment = _by_name(deployment_specs(_settings(), programme))[name].to_deployment()
    assert found[name].name == deployment.flow_name == flow_name
    assert _schedule(deployment).cron == cron
    assert deployment.entrypoint == f"{OPTIONAL_FLOWS[name][0].replace('.', '/')}.py:{OPTIONAL_FLOWS[name][1]}"


def test_member_local_campaigns_run_daily_just_after_midnight_utc(programme: Programme, tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(REPO_ROOT / "config", config)
    spec = (config / "campaigns" / "win_back.yaml").read_text(encoding="utf-8")
    head, _, _ = spec.partition("schedule:")
    tail = spec.split("timezone: America/Toronto\n", 1)[1]
    (config / "campaigns" / "local_nudge.yaml").write_text(f'{head}schedule:\n  member_local: "10:00"\n{tail}',
                                                            encoding="utf-8")
    schedule = _by_name(deployment_specs(_settings(config), programme))["campaign-local_nudge"].schedules[0]
    assert (schedule.cron, schedule.timezone) == (MEMBER_LOCAL_CRON, "UTC") == ("5 0 * * *", "UTC")


def test_dask_runs_the_chunking_flows_on_the_given_cluster(programme: Programme) -> None:
    from prefect_dask import DaskTaskRunner

    specs = _by_name(deployment_specs(_settings(), programme, task_runner=TaskRunnerKind.DASK,
                                      dask_address="tcp://10.0.0.5:8786"))
    for name in ("campaign-win_back", "nightly-maintenance", "points-expiring"):
        runner_ = specs[name].flow.task_runner
        assert isinstance(runner_, DaskTaskRunner) and runner_.address == "tcp://10.0.0.5:8786"
    for single in ("tier-upgrades", "refit-lifetime"):  # one task: nothing to spread
        assert not isinstance(specs[single].flow.task_runner, DaskTaskRunner)
    with pytest.raises(ValueError, match="--dask-address"):
        deployment_specs(_settings(), programme, task_runner=TaskRunnerKind.DASK)


def test_served_flows_survive_the_runners_pickling_with_their_task_runner(programme: Programme) -> None:
    import cloudpickle
    from prefect_dask import DaskTaskRunner

    specs = _by_name(deployment_specs(_settings(), programme, task_runner=TaskRunnerKind.DASK,
                                      dask_address="tcp://10.0.0.5:8786"))
    for name, parameters in (("campaign-win_back", {"campaign": "win_back", "slot": "2026-03-02T15:00:00Z"}),
                             ("points-expiring", {"as_of": "2026-03-02T15:00:00Z"}), ("tier-upgrades", {}),
                             ("refit-lifetime", {"as_of": "2026-03-02T15:00:00Z"})):
        # What Runner.add_flow does to run a flow: cloudpickle it into a fresh subprocess.
        flow = cloudpickle.loads(cloudpickle.dumps(specs[name].flow))
        assert flow.name == specs[name].flow.name and flow.fn is specs[name].flow.fn
        # String annotations (`from __future__ import annotations`) resolve: the slot becomes a datetime.
        validated = flow.validate_parameters(parameters)
        assert all(not isinstance(validated.get(k), str) for k in ("slot", "as_of"))
    dask_runner = cloudpickle.loads(cloudpickle.dumps(specs["campaign-win_back"].flow)).task_runner
    assert isinstance(dask_runner, DaskTaskRunner) and dask_runner.address == "tcp://10.0.0.5:8786"


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> typer.Typer:
    """``loyalflow`` as the lead will wire it: the real settings callback plus ``flows_app`` at the top."""
    monkeypatch.setenv("LOYALFLOW_CONFIG_DIR", str(REPO_ROOT / "config"))
    monkeypatch.setenv("LOYALFLOW_TEMPLATES_DIR", str(REPO_ROOT / "templates"))
    monkeypatch.setenv("COLUMNS", "250")
    app = typer.Typer(callback=main_callback)
    app.add_typer(flows_app, name=None)
    return app


def test_cli_list_prints_every_deployment_with_schedule_and_trigger(cli: typer.Typer) -> None:
    result = runner.invoke(cli, ["serve-flows", "--list", "--timezone", "Europe/Paris"])
    assert result.exit_code == 0, result.output
    for name in ("campaign-double_points_weekend", "campaign-win_back", "nightly-maintenance", "tier-upgrades",
                 "points-expiring", "refit-lifetime"):
        assert name in result.output
    assert "cron 0 11 * * tue (America/Toronto)" in result.output
    assert "cron 0 2 * * * (Europe/Paris)" in result.output
    assert "every 60 s" in result.output and "loyalty.member.tier-upgraded" in result.output
    assert "campaign='win_back'" in result.output and "ThreadPoolTaskRunner" in result.output


def test_cli_refuses_bad_options_and_serving_without_a_server(cli: typer.Typer) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    no_address = runner.invoke(cli, ["serve-flows", "--list", "--task-runner", "dask"])
    assert no_address.exit_code == 2 and "--dask-address" in no_address.output
    bad_zone = runner.invoke(cli, ["serve-flows", "--list", "--timezone", "Mars/Olympus"])
    assert bad_zone.exit_code == 2 and "unknown time zone 'Mars/Olympus'" in bad_zone.output
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        unserved = runner.invoke(cli, ["serve-flows"])
    assert unserved.exit_code == 2 and "PREFECT_API_URL is not set" in unserved.output


@pytest.fixture
def dask_cluster() -> Iterator[str]:
    """An in-process Dask cluster (one worker, two threads); yields the scheduler's address."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        yield str(cluster.scheduler_address)


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_campaign_chunks_run_on_an_existing_dask_cluster(app_env: Engine, dask_cluster: str, programme: Programme,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed import Client, get_task_stream
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    monkeypatch.setenv("LOYALFLOW_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("LOYALFLOW_TEMPLATES_DIR", str(REPO_ROOT / "templates"))
    for edge in ("START", "END"):  # no quiet hours: the test must send whatever the hour
        monkeypatch.setenv(f"LOYALFLOW_POLICY__QUIET_HOURS_{edge}", "10:00")
    with Session(app_env) as session:
        for _ in range(25):
            add_contactable_member(session, channels=("email",), joined_at=utcnow() - timedelta(days=1))
        session.commit()
    flow = _by_name(deployment_specs(_settings(), programme, task_runner=TaskRunnerKind.DASK,
                                     dask_address=dask_cluster))["campaign-new_member_bonus"].flow
    with Client(dask_cluster) as client, get_task_stream(client) as stream, \
            temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        workers = list(client.scheduler_info()["workers"])
        summary = flow("new_member_bonus", slot=utcnow(), chunk_size=10)
    assert summary is not None
    ran_on_dask = [record for record in stream.data if record["status"] == "OK"]
    assert summary["chunks"] == 3 and summary["audience"] == 25
    # The mapped chunk tasks went to the cluster's worker (dispatch is called inline, in the flow's process).
    assert len(ran_on_dask) == summary["chunks"] and {r["worker"] for r in ran_on_dask} == set(workers)
    assert all(r["key"].startswith("process_chunk_task-") for r in ran_on_dask)
    with app_env.connect() as connection:
        statuses: dict[Any, int] = dict(connection.execute(sa.select(OUTBOX_MESSAGES.c.status, sa.func.count())
                                           .group_by(OUTBOX_MESSAGES.c.status)).all())
    assert statuses == {OutboxStatus.SENT: summary["queued"]} and summary["sent:email"] == summary["queued"] > 0


SERVE_SCRIPT = """
import typer
from loyalty.cli import main_callback
from loyalty.cli_flows import flows_app
app = typer.Typer(callback=main_callback)
app.add_typer(flows_app, name=None)
app()
"""


@pytest.fixture
def served(app_env: Engine, tcp_dask_cluster: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``loyalflow serve-flows --task-runner dask`` in a subprocess against the session's temporary API."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "", "LOYALFLOW_VAR_DIR": str(tmp_path / "var"),
           "LOYALFLOW_TEMPLATES_DIR": str(REPO_ROOT / "templates")}
    env.pop("PREFECT_FLOWS_HEARTBEAT_FREQUENCY")
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen([sys.executable, "-c", SERVE_SCRIPT, "serve-flows", "--task-runner", "dask",
                                "--dask-address", tcp_dask_cluster], cwd=REPO_ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def tcp_dask_cluster() -> Iterator[str]:
    """A Dask cluster another process can reach: TCP scheduler, one worker thread pool in this process."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        yield str(cluster.scheduler_address)


def _wait_for_deployment(name: str, process: subprocess.Popen[bytes], timeout: float = 90) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, "serve-flows exited early"
            try:
                return client.read_deployment_by_name(name)
            except ObjectNotFound:
                time.sleep(0.5)
    raise AssertionError(f"{name} was never registered")


@pytest.mark.skipif(not os.environ.get("LOYALFLOW_TEST_SERVE"),
                    reason="serving end to end takes 35-85 s (two Prefect processes start): set LOYALFLOW_TEST_SERVE=1")
@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_served_campaign_runs_its_chunks_on_dask(served: subprocess.Popen[bytes], app_env: Engine,
                                                 tcp_dask_cluster: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed import Client, get_task_stream
    from prefect.deployments import run_deployment

    # The chunk tasks run on this process's worker: it needs the same settings as the served process.
    monkeypatch.setenv("LOYALFLOW_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("LOYALFLOW_TEMPLATES_DIR", str(REPO_ROOT / "templates"))
    with Session(app_env) as session:
        for _ in range(12):
            add_contactable_member(session, channels=("email",), joined_at=utcnow() - timedelta(days=1))
        session.commit()
    # The tier sweeper is served last among the shipped ones: once it is there, the rest are too.
    tier = _wait_for_deployment("send-tier-upgrades/tier-upgrades", served)
    campaign = _wait_for_deployment("campaign-run/campaign-new_member_bonus", served)
    assert campaign.parameters == {"campaign": "new_member_bonus"}
    assert [(s.schedule.cron, s.schedule.timezone) for s in campaign.schedules] == [("0 10 * * mon", "America/Toronto")]
    assert tier.schedules[0].schedule.interval == timedelta(minutes=1)
    with Client(tcp_dask_cluster) as client, get_task_stream(client) as stream:
        run: Any = run_deployment(campaign.id, parameters={"chunk_size": 5, "dispatch": False}, timeout=120,
                             poll_interval=1, as_subflow=False)
    assert run.state is not None and run.state.is_completed(), (run.state, (tmp_path / "serve.log").read_text())
    chunks = [r for r in stream.data if r["status"] == "OK" and r["key"].startswith("process_chunk_task-")]
    assert len(chunks) == 3  # 12 members in ranges of 5 ids, each chunk executed by the cluster
    with app_env.connect() as connection:
        queued = connection.execute(sa.select(sa.func.count()).select_from(OUTBOX_MESSAGES)).scalar_one()
    assert queued > 0
