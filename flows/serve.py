"""Every deployment of loyalflow, with its schedule or trigger, served by one long-running process.

``loyalflow serve-flows`` registers the deployments below with the Prefect API named by
``PREFECT_API_URL`` (a ``prefect server start``; the temporary server a bare process starts
schedules nothing) and runs what comes due: one deployment per campaign spec on its cron in its
own time zone, nightly maintenance, the tier-upgrade sweeper every minute *and* on the
``loyalty.member.tier-upgraded`` event, points-expiring reminders, the weekly lifetime-value refit,
attribution and training.

With ``task_runner="dask"`` the flows that fan out over member id ranges run with
``DaskTaskRunner(address=...)``, so their chunk tasks go to an existing Dask cluster.
:func:`serve_all` hands the Runner the configured *flow objects* (``Runner.add_flow``) rather
than calling ``prefect.serve`` with deployments: a served deployment is otherwise re-loaded from
its entrypoint (``flows/campaign.py:campaign_run``), which silently drops ``with_options``; the
flow objects are :class:`ServedFlow` copies, which the Runner can pickle into each run's process.

Attribution and training live in modules written separately; they are imported lazily and left
out while absent (:func:`optional_flows` says why), so serving the rest never depends on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from prefect import Flow
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron, Interval, Schedule

from loyalty.campaigns import CampaignSpec, load_campaigns
from loyalty.programme import Programme
from loyalty.settings import Settings


class TaskRunnerKind(StrEnum):
    """Where the chunk tasks of the fanning-out flows run."""

    THREAD = "thread"  # Prefect's default: threads in the flow run's process
    DASK = "dask"  # an existing Dask cluster, through prefect-dask

#: When the programme-wide deployments run (5-field cron, in the zone given to build_deployments).
MAINTENANCE_CRON = "0 2 * * *"  # expiry and tiers before anybody's morning
ATTRIBUTION_CRON = "0 4 * * *"  # after maintenance: yesterday's purchases against past sends
POINTS_EXPIRING_CRON = "0 10 * * *"  # a daytime send; quiet hours defer members still asleep
TRAINING_CRON = "0 5 * * sun"  # weekly, on a full week of attributed outcomes
#: Weekly, after maintenance and before training: campaign audiences' lifetime bounds read what it writes.
LIFETIME_CRON = "0 3 * * sun"
#: member_local campaigns run once a day just after midnight UTC; each message carries its local send time.
MEMBER_LOCAL_CRON = "5 0 * * *"
TIER_SWEEP_EVERY = timedelta(minutes=1)

#: Optional flows: deployment name -> (module, flow attribute). Absent modules are skipped.
OPTIONAL_FLOWS = {
    "attribute-campaigns": ("flows.attribution", "attribute_campaigns"),
    "train-recommender": ("flows.training", "train_recommender"),
}


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment before it is built: the flow object (with its task runner) and its options."""

    name: str
    flow: Flow[..., Any]
    schedules: list[Schedule] = field(default_factory=list)
    triggers: list[DeploymentEventTrigger] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    description: str | None = None

    def options(self) -> dict[str, Any]:
        """Keyword arguments shared by ``Flow.to_deployment`` and ``Runner.add_flow``."""
        return {"schedules": self.schedules, "triggers": list(self.triggers), "parameters": self.parameters,
                "description": self.description, "tags": ["loyalflow"]}

    def to_deployment(self) -> RunnerDeployment:
        """The Prefect deployment (what gets registered with the API)."""
        return RunnerDeployment.from_flow(self.flow, self.name, **self.options())  # what to_deployment does, typed


def _load_flow(module: str, attribute: str, options: dict[str, Any]) -> Flow[..., Any]:
    """The module-level flow ``module.attribute`` with ``options`` applied (how a served flow is unpickled)."""
    flow: Flow[..., Any] = getattr(importlib.import_module(module), attribute)
    return flow.with_options(**options)


class ServedFlow(Flow[..., Any]):
    """A flow that pickles as (module, attribute, options), i.e. by reference to its code.

    The Runner cloudpickles a served flow into each run's subprocess. Pickled by value, the flow's
    function keeps only the globals its code uses, so the string annotations of modules with
    ``from __future__ import annotations`` (``slot: datetime | None``) no longer resolve and
    parameter validation fails; re-importing the module and re-applying the options avoids that.
    """

    origin: tuple[str, str, dict[str, Any]]

    def __reduce__(self) -> tuple[Any, tuple[str, str, dict[str, Any]]]:
        return _load_flow, self.origin


def served(flow: Flow[..., Any], options: dict[str, Any]) -> ServedFlow:
    """A copy of the module-level ``flow`` with ``options`` (e.g. a task runner) that survives pickling."""
    copy = flow.with_options(**options)
    copy.__class__ = ServedFlow  # same layout: Flow's attributes, plus ServedFlow's __reduce__
    assert isinstance(copy, ServedFlow)
    copy.origin = (flow.fn.__module__, flow.fn.__name__, options)
    return copy


def task_runner_options(task_runner: TaskRunnerKind, dask_address: str | None) -> dict[str, Any]:
    """``with_options`` arguments for the chunk-fanning flows: empty for threads, a DaskTaskRunner for dask."""
    if task_runner is TaskRunnerKind.THREAD:
        return {}
    if not dask_address:
        raise ValueError("--task-runner dask needs --dask-address tcp://HOST:PORT (an existing Dask scheduler)")
    from prefect_dask import DaskTaskRunner

    return {"task_runner": DaskTaskRunner(address=dask_address)}


def optional_flows() -> tuple[dict[str, Flow[..., Any]], dict[str, str]]:
    """The optional flows found (deployment name -> flow) and those left out (name -> why)."""
    found: dict[str, Flow[..., Any]] = {}
    missing: dict[str, str] = {}
    for name, (module_name, attribute) in OPTIONAL_FLOWS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:  # the module exists but one of *its* imports is missing: a real error
                raise
            missing[name] = f"module {module_name} not found"
            continue
        candidate = getattr(module, attribute, None)
        if isinstance(candidate, Flow):
            found[name] = candidate
        else:
            missing[name] = f"{module_name} has no flow {attribute}"
    return found, missing


def campaign_schedule(spec: CampaignSpec) -> Schedule:
    """A campaign's schedule: its cron in its zone, or daily at 00:05 UTC for member-local campaigns."""
    if spec.schedule.cron is not None:
        return Cron(spec.schedule.cron, timezone=spec.schedule.timezone)
    return Cron(MEMBER_LOCAL_CRON, timezone="UTC")


def _campaign_specs(settings: Settings, programme: Programme, chunked: dict[str, Any]) -> list[DeploymentSpec]:
    from flows.campaign import campaign_run

    flow = served(campaign_run, chunked)
    return [DeploymentSpec(name=f"campaign-{spec.name}", flow=flow, schedules=[campaign_schedule(spec)],
                           parameters={"campaign": spec.name}, description=spec.description or None)
            for spec in load_campaigns(settings.config_dir / "campaigns", programme, settings.templates_dir).values()]


def _programme_specs(timezone: str, chunked: dict[str, Any]) -> list[DeploymentSpec]:
    from flows.lifetime import refit_lifetime
    from flows.maintenance import nightly_maintenance
    from flows.tier_upgrade import send_tier_upgrades, tier_upgrade_deployment_trigger
    from flows.triggers import send_points_expiring

    specs = [
        DeploymentSpec("nightly-maintenance", served(nightly_maintenance, chunked),
                       schedules=[Cron(MAINTENANCE_CRON, timezone=timezone)]),
        # The interval is the sweeper (the table is the truth); the trigger makes an announced upgrade fast.
        DeploymentSpec("tier-upgrades", served(send_tier_upgrades, {}),
                       schedules=[Interval(TIER_SWEEP_EVERY, timezone="UTC")],
                       triggers=[tier_upgrade_deployment_trigger()]),
        DeploymentSpec("points-expiring", served(send_points_expiring, chunked),
                       schedules=[Cron(POINTS_EXPIRING_CRON, timezone=timezone)]),
        # One fit over everybody in one task (it chunks its own SQL): nothing for Dask to spread.
        DeploymentSpec("refit-lifetime", served(refit_lifetime, {}),
                       schedules=[Cron(LIFETIME_CRON, timezone=timezone)]),
    ]
    found, _ = optional_flows()
    if "attribute-campaigns" in found:  # fans out over id ranges like maintenance
        specs.append(DeploymentSpec("attribute-campaigns", served(found["attribute-campaigns"], chunked),
                                    schedules=[Cron(ATTRIBUTION_CRON, timezone=timezone)]))
    if "train-recommender" in found:
        specs.append(DeploymentSpec("train-recommender", served(found["train-recommender"], {}),
                                    schedules=[Cron(TRAINING_CRON, timezone=timezone)]))
    return specs


def deployment_specs(settings: Settings, programme: Programme, *, timezone: str = "UTC",
                     task_runner: TaskRunnerKind = TaskRunnerKind.THREAD,
                     dask_address: str | None = None) -> list[DeploymentSpec]:
    """Every deployment to serve: one per campaign spec, then the programme-wide flows.

    ``timezone`` is the zone of the programme-wide crons (campaigns carry their own). Raises
    :class:`~loyalty.programme.ConfigError` for a broken campaign file, before anything is served.
    """
    chunked = task_runner_options(task_runner, dask_address)
    return _campaign_specs(settings, programme, chunked) + _programme_specs(timezone, chunked)


def build_deployments(settings: Settings, programme: Programme, *, timezone: str = "UTC",
                      task_runner: TaskRunnerKind = TaskRunnerKind.THREAD, dask_address: str | None = None
                      ) -> list[RunnerDeployment]:
    """The :class:`RunnerDeployment` of every spec from :func:`deployment_specs` (same arguments)."""
    specs = deployment_specs(settings, programme, timezone=timezone, task_runner=task_runner,
                             dask_address=dask_address)
    return [spec.to_deployment() for spec in specs]


def serve_all(specs: list[DeploymentSpec], *, limit: int | None = None, pause_on_shutdown: bool = True) -> None:
    """Register ``specs`` with the Prefect API and run their flow runs until interrupted (blocks).

    Does what ``prefect.serve`` does, but through ``Runner.add_flow`` so each run executes the
    configured flow object (task runner included) instead of re-importing its entrypoint.
    """
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    runner = Runner(name="loyalflow", pause_on_shutdown=pause_on_shutdown, limit=limit)
    for spec in specs:
        runner.add_flow(spec.flow, spec.name, **spec.options())
    # Ctrl-C or SIGTERM is a clean stop; the runner pauses the schedules on its way out when asked to.
    with contextlib.suppress(KeyboardInterrupt, TerminationSignal):
        asyncio.run(runner.start())


def describe(spec: DeploymentSpec) -> dict[str, str]:
    """One spec as display strings: flow, schedule(s), trigger(s), parameters, task runner."""
    return {
        "name": spec.name,
        "flow": spec.flow.name,
        "schedule": "; ".join(_describe_schedule(s) for s in spec.schedules) or "-",
        "trigger": "; ".join(_describe_trigger(t) for t in spec.triggers) or "-",
        "parameters": ", ".join(f"{k}={v!r}" for k, v in spec.parameters.items()) or "-",
        "task_runner": type(spec.flow.task_runner).__name__,
    }


def _describe_schedule(schedule: Schedule) -> str:
    if schedule.cron is not None:
        return f"cron {schedule.cron} ({schedule.timezone or 'UTC'})"
    if schedule.interval is not None:
        return f"every {int(schedule.interval.total_seconds())} s"
    return f"rrule {schedule.rrule}"


def _describe_trigger(trigger: DeploymentEventTrigger) -> str:
    match = trigger.match if isinstance(trigger.match, dict) else trigger.match.root
    return f"on {', '.join(sorted(trigger.expect))} matching {match}"
