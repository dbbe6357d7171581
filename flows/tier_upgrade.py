"""The tier-upgrade message as a Prefect flow, within seconds of the purchase that earned it.

The database is the source of truth, never the event: a purchase that moves a member up a tier
records a ``tier_changes`` row in the same transaction (:func:`loyalty.ledger.record_purchases`),
then :func:`announce_tier_upgrade` emits ``loyalty.member.tier-upgraded``. ``emit_event`` is
fire-and-forget (with the API down the event is silently dropped), so the event only makes the
message fast: the served :func:`send_tier_upgrades` deployment is woken by it through
:func:`tier_upgrade_deployment_trigger`, and the same flow on a schedule is the sweeper that
catches whatever an event missed. Either way it handles *every* unhandled change, and the
outbox keys (``tier_upgrade:{change_id}``) make two runs at once queue nothing twice.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.events import DeploymentEventTrigger, emit_event
from prefect.settings import PREFECT_API_URL

from flows.triggers import _finish, _library, _merge
from loyalty import jobs
from loyalty.triggers import TIER_UPGRADE, queue_tier_upgrades

TIER_UPGRADED_EVENT = "loyalty.member.tier-upgraded"
MEMBER_RESOURCE_PREFIX = "loyalty.member."


def member_resource_id(member_id: int) -> str:
    """The Prefect resource id of a member (what the deployment trigger matches on)."""
    return f"{MEMBER_RESOURCE_PREFIX}{member_id}"


def announce_tier_upgrade(member_id: int, change_id: int) -> bool:
    """Emit ``loyalty.member.tier-upgraded`` for a recorded change; True if an event was handed over.

    Best effort by design: the change row is already committed, and the sweeper messages it
    even if this event is lost, so no error here may reach the caller. Without ``PREFECT_API_URL``
    nothing is emitted: only a running server has the deployment trigger the event is for.
    """
    if PREFECT_API_URL.value() is None:
        # No server: a temporary API would be started just to drop the event (it serves no triggers).
        return False
    try:
        event = emit_event(TIER_UPGRADED_EVENT, resource={"prefect.resource.id": member_resource_id(member_id)},
                           payload={"member_id": member_id, "change_id": change_id})
    except Exception:  # an event is an optimisation, never a failure
        return False
    return event is not None


def tier_upgrade_deployment_trigger(*, enabled: bool = True) -> DeploymentEventTrigger:
    """The trigger that runs the served :func:`send_tier_upgrades` deployment on each upgrade event."""
    return DeploymentEventTrigger(
        name="tier-upgraded",
        enabled=enabled,
        expect={TIER_UPGRADED_EVENT},
        match={"prefect.resource.id": f"{MEMBER_RESOURCE_PREFIX}*"},
        parameters={"member_id": "{{ event.resource.id }}"},
    )


@task(name="queue-tier-upgrades", cache_policy=NONE, retries=2, retry_delay_seconds=5)
def queue_tier_upgrades_task(limit: int = 500, max_batches: int = 100) -> dict[str, Any]:
    """Queue messages for unhandled upgrades, ``limit`` per transaction, until none are left."""
    rt = jobs.runtime()
    library = _library()
    total: dict[str, Any] = {}
    for _ in range(max_batches):
        report = queue_tier_upgrades(rt.engine, rt.programme, library, limit=limit)
        _merge(total, report.as_dict())
        if report.considered < limit or report.handled == 0:  # drained, or stuck on template errors
            break
    return total


@flow(name="send-tier-upgrades", log_prints=False)
def send_tier_upgrades(member_id: str | None = None, limit: int = 500) -> dict[str, Any]:
    """Message every unhandled tier upgrade and send it; the sweeper and the event-triggered run alike.

    ``member_id`` is the resource id of the event that woke this run, if any; it is only logged,
    because handling every pending change is what makes a lost event harmless.
    """
    if member_id:
        get_run_logger().info("woken by an upgrade of %s", member_id)
    return _finish(queue_tier_upgrades_task(limit), TIER_UPGRADE, "tier-upgrades")
