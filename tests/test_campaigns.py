"""Campaign specs: shipped files load, every kind of mistake names file and field, cron slots (DST too)."""

from __future__ import annotations

from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any

import pytest
import yaml

from loyalty.campaigns import CampaignSpec, Cron, Recommender, load_campaign, load_campaigns
from loyalty.programme import ConfigError, Programme
from loyalty.settings import PolicySettings
from loyalty.types import Channel
from tests.conftest import REPO_ROOT

TEMPLATES = REPO_ROOT / "templates"


def _base() -> dict[str, Any]:
    return {
        "audience": {"tiers": ["gold"], "inactive_for_days": 60, "active_within_days": 180},
        "offers": ["ten_percent_off", "free_coffee"],
        "recommender": "uplift",
        "holdout_share": 0.1,
        "channels": ["email", "sms"],
        "template": "win_back",
        "schedule": {"cron": "0 10 * * fri", "timezone": "America/Toronto"},
    }


def _write(folder: Path, name: str, data: dict[str, Any] | str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _spec(programme: Programme, **changes: Any) -> CampaignSpec:
    return CampaignSpec.model_validate({**_base(), "name": "t", **changes}, context={"programme": programme})


def test_shipped_campaigns_load_against_shipped_programme_and_templates(programme: Programme) -> None:
    specs = load_campaigns(REPO_ROOT / "config" / "campaigns", programme, TEMPLATES)
    assert set(specs) == {"weekly_points_reminder", "win_back", "double_points_weekend", "new_member_bonus",
                          "birthday", "nps_survey", "service_recovery"}
    assert specs["birthday"].schedule.member_local is not None and specs["birthday"].audience.birthday_within_days
    win_back = specs["win_back"]
    assert win_back.offers == ["ten_percent_off", "free_coffee", "bonus_500"]
    assert (win_back.recommender, win_back.holdout_share) == (Recommender.UPLIFT, 0.1)
    weekend = specs["double_points_weekend"]
    assert weekend.channels == [Channel.SMS, Channel.EMAIL]
    assert [v.name for v in weekend.variants] == ["A", "B"]
    assert specs["weekly_points_reminder"].audience.min_points == 500


def test_a_good_file_loads_with_its_stem_as_name(tmp_path: Path, programme: Programme) -> None:
    spec = load_campaign(_write(tmp_path, "lapsing_gold", _base()), programme, TEMPLATES)
    assert spec.name == "lapsing_gold"
    assert spec.schedule.timezone == "America/Toronto"


def _with(path: str, value: Any) -> dict[str, Any]:
    data = _base()
    *parents, leaf = path.split(".")
    target = data
    for key in parents:
        target = target[key]
    target[leaf] = value
    return data


@pytest.mark.parametrize(("data", "expected"), [
    (_with("holdout_share", 0.6), "holdout_share: Input should be less than or equal to 0.5"),
    (_with("offers", ["ten_percent_off", "teleport"]),
     "offers: Value error, unknown or inactive offer(s) ['teleport']"),
    (_with("offers", ["free_coffee", "free_coffee"]), "offers: Value error, offer codes must be unique"),
    (_with("template", "offers/no_such_offer"), "template: Value error, no message folder 'offers/no_such_offer'"),
    (_with("template", "../secrets"), "template: String should match pattern"),
    (_with("recommender", "magic"), "recommender: Input should be 'uplift', 'propensity' or 'rules'"),
    (_with("channels", []), "channels: List should have at least 1 item"),
    (_with("channels", ["email", "email"]), "channels: Value error, channels must be unique"),
    (_with("channels", ["email", "fax"]), "channels.1: Input should be 'email', 'sms' or 'push'"),
    (_with("audience.tiers", ["diamond"]), "audience.tiers: Value error, unknown tier(s) ['diamond']"),
    (_with("audience.inactive_for_days", 200), "audience: Value error, inactive_for_days must be less than"),
    (_with("audience.min_points", -1), "audience.min_points: Input should be greater than or equal to 0"),
    (_with("audience.locales", ["french"]), "audience.locales.0: String should match pattern"),
    (_with("schedule.timezone", "Mars/Olympus_Mons"), "schedule.timezone: Value error, unknown time zone"),
    (_with("schedule.member_local", "10:00"), "schedule: Value error, give exactly one of cron"),
    (_with("schedule", {"cron": "0 10 * * *"}), "schedule: Value error, a cron schedule needs a timezone"),
    (_with("schedule.cron", "0 25 * * *"), "schedule.cron: Value error, cron field '25'"),
    (_with("schedule.cron", "0 10 * *"), "schedule.cron: Value error, cron '0 10 * *' needs 5 fields"),
    (_with("schedule.cron", "0 0 30 feb *"), "schedule.cron: Value error, cron '0 0 30 feb *' never fires"),
    (_with("variants", [{"name": "A", "weight": 0.5, "subject": "x"}, {"name": "B", "weight": 0.4, "subject": "y"}]),
     "variants: Value error, variant weights must sum to 1 (they sum to 0.9)"),
    (_with("variants", [{"name": "A", "weight": 1.0, "subject": "x"}]), "variants: Value error, an A/B test needs"),
    (_with("variants", [{"name": "A", "weight": 0.5}, {"name": "B", "weight": 0.5, "subject": "y"}]),
     "variants.0: Value error, a variant needs a template or a subject"),
    (_with("variants", [{"name": "A", "weight": 0.5, "template": "nope"}, {"name": "B", "weight": 0.5,
                                                                              "template": "win_back"}]),
     "variants: Value error, no message folder 'nope'"),
    (_with("quiet_hours", {"start": "25:00", "end": "08:00"}), "quiet_hours.start: Input should be in a valid time"),
    (_with("budget_cents", 0), "budget_cents: Input should be greater than 0"),
    (_with("budget", 100), "budget: Extra inputs are not permitted"),
    ({**_base(), "name": "other"}, "name: the file name is the campaign's name"),
])
def test_each_mistake_names_file_and_field(tmp_path: Path, programme: Programme, data: dict[str, Any],
                                           expected: str) -> None:
    path = _write(tmp_path, "broken", data)
    with pytest.raises(ConfigError) as error:
        load_campaign(path, programme, TEMPLATES)
    assert str(error.value).startswith(f"{path}: ")
    assert expected in str(error.value)


def test_subject_variants_need_email(tmp_path: Path, programme: Programme) -> None:
    data = _with("variants", [{"name": "A", "weight": 0.5, "subject": "x"}, {"name": "B", "weight": 0.5,
                                                                            "subject": "y"}])
    data["channels"] = ["sms"]
    with pytest.raises(ConfigError, match="variants: Value error, subject variants need email"):
        load_campaign(_write(tmp_path, "broken", data), programme, TEMPLATES)


def test_unquoted_yaml_time_is_refused_not_misread(tmp_path: Path, programme: Programme) -> None:
    # YAML 1.1 reads 10:00 as 600; pydantic would take that as 00:10.
    text = yaml.safe_dump({k: v for k, v in _base().items() if k != "schedule"}) + "schedule:\n  member_local: 10:00\n"
    with pytest.raises(ConfigError, match=r"schedule\.member_local: Value error, write times as quoted"):
        load_campaign(_write(tmp_path, "broken", text), programme, TEMPLATES)


def test_member_local_schedule_loads_but_has_no_shared_slots(tmp_path: Path, programme: Programme) -> None:
    spec = load_campaign(_write(tmp_path, "local", _with("schedule", {"member_local": "10:00"})), programme)
    assert spec.schedule.member_local == time(10, 0)
    with pytest.raises(ValueError, match="member-local"):
        spec.next_slots(datetime(2025, 1, 1, tzinfo=UTC), 1)


def test_template_folders_are_only_checked_when_a_templates_dir_is_given(tmp_path: Path,
                                                                         programme: Programme) -> None:
    path = _write(tmp_path, "later", _with("template", "not_written_yet"))
    assert load_campaign(path, programme).template == "not_written_yet"
    with pytest.raises(ConfigError, match="template: Value error, no message folder"):
        load_campaign(path, programme, TEMPLATES)


def test_template_must_have_a_file_for_every_channel(tmp_path: Path, programme: Programme) -> None:
    templates = tmp_path / "templates"
    (templates / "email_only" / "en").mkdir(parents=True)
    (templates / "email_only" / "en" / "email.html").write_text("<p>hi</p>")
    path = _write(tmp_path / "campaigns", "c", _with("template", "email_only"))
    with pytest.raises(ConfigError, match=r"template: Value error, message folder 'email_only' has no sms\.txt"):
        load_campaign(path, programme, templates)


def test_load_campaigns_reports_every_broken_file_at_once(tmp_path: Path, programme: Programme) -> None:
    _write(tmp_path, "good", _base())
    first = _write(tmp_path, "bad_holdout", _with("holdout_share", 0.9))
    second = _write(tmp_path, "bad_yaml", "offers: [unclosed\n")
    with pytest.raises(ConfigError) as error:
        load_campaigns(tmp_path, programme, TEMPLATES)
    message = str(error.value)
    assert message.startswith(f"{first}: holdout_share: Input should be less than or equal to 0.5\n")
    assert f"\n{second}: not valid YAML" in message
    assert "good.yaml" not in message


def test_policy_overrides_apply_on_top_of_settings(programme: Programme) -> None:
    spec = _spec(programme, quiet_hours={"start": "20:00", "end": "08:30"},
                 frequency_cap={"count": 1, "window_hours": 48})
    policy = spec.policy(PolicySettings())
    assert (policy.quiet_hours_start, policy.quiet_hours_end) == (time(20), time(8, 30))
    assert (policy.frequency_cap, policy.frequency_window_hours) == (1, 48)
    assert _spec(programme).policy(PolicySettings()) == PolicySettings()


def _slots(programme: Programme, cron: str, zone: str, after: datetime, count: int = 3) -> list[datetime]:
    return _spec(programme, schedule={"cron": cron, "timezone": zone}).next_slots(after, count)


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def test_cron_lists_ranges_and_steps(programme: Programme) -> None:
    # Friday 2025-01-03 10:30 UTC; then the weekend is skipped.
    assert _slots(programme, "*/20 9-10 * * 1-5", "UTC", _utc(2025, 1, 3, 10, 30)) == [
        _utc(2025, 1, 3, 10, 40), _utc(2025, 1, 6, 9, 0), _utc(2025, 1, 6, 9, 20)]
    assert _slots(programme, "5/30 8,17 * * *", "UTC", _utc(2025, 1, 1, 8, 5)) == [
        _utc(2025, 1, 1, 8, 35), _utc(2025, 1, 1, 17, 5), _utc(2025, 1, 1, 17, 35)]


def test_cron_day_of_month_or_weekday(programme: Programme) -> None:
    # Both restricted: either matches (classic cron). Thu 2025-09-25 -> Mon 29, Wed Oct 1 (the 1st), Mon Oct 6.
    assert _slots(programme, "0 0 1 * mon", "UTC", _utc(2025, 9, 25)) == [
        _utc(2025, 9, 29), _utc(2025, 10, 1), _utc(2025, 10, 6)]
    assert _slots(programme, "0 12 29 feb *", "UTC", _utc(2025, 1, 1), 1) == [_utc(2028, 2, 29, 12)]


def test_cron_weekly_in_toronto_follows_dst(programme: Programme) -> None:
    # Clocks go forward on Sunday 2025-03-09: Friday 10:00 is 15:00 UTC before, 14:00 UTC after.
    assert _slots(programme, "0 10 * * fri", "America/Toronto", _utc(2025, 3, 1)) == [
        _utc(2025, 3, 7, 15), _utc(2025, 3, 14, 14), _utc(2025, 3, 21, 14)]


def test_cron_time_skipped_by_spring_forward_fires_an_hour_later(programme: Programme) -> None:
    # 02:30 does not exist on 2025-03-09 in Toronto: it fires at 03:30 EDT (07:30 UTC), once.
    assert _slots(programme, "30 2,3 * * *", "America/Toronto", _utc(2025, 3, 8, 12)) == [
        _utc(2025, 3, 9, 7, 30), _utc(2025, 3, 10, 6, 30), _utc(2025, 3, 10, 7, 30)]


def test_cron_time_repeated_by_fall_back_fires_once(programme: Programme) -> None:
    # 01:30 happens twice on 2025-11-02 in Toronto (EDT then EST): only the first counts.
    assert _slots(programme, "30 1 * * *", "America/Toronto", _utc(2025, 11, 1, 12)) == [
        _utc(2025, 11, 2, 5, 30), _utc(2025, 11, 3, 6, 30), _utc(2025, 11, 4, 6, 30)]


def test_next_slots_are_strictly_after(programme: Programme) -> None:
    assert _slots(programme, "0 * * * *", "UTC", _utc(2025, 1, 1, 5), 1) == [_utc(2025, 1, 1, 6)]
    with pytest.raises(ValueError, match="timezone-aware"):
        _slots(programme, "0 * * * *", "UTC", datetime(2025, 1, 1), 1)


@pytest.mark.parametrize("expression", ["* * * *", "60 * * * *", "5-1 * * * *", "*/0 * * * *", "x * * * *"])
def test_bad_cron_expressions(expression: str) -> None:
    with pytest.raises(ValueError, match=r"cron|number"):
        Cron.parse(expression)


def test_cron_sunday_is_0_or_7() -> None:
    assert Cron.parse("0 0 * * 7").weekdays == Cron.parse("0 0 * * sun").weekdays == frozenset({0})
