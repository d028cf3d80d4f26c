"""Cron times of a FineTuneSchedule, in its time zone, as aware UTC datetimes.

The expression is matched against local wall-clock times (croniter, on naive datetimes), and each wall
time is placed in the zone by zoneinfo with fold=0. So `30 2 * * *` in Europe/Berlin fires at 02:30 local
every day; on the day clocks skip 02:00-03:00 it fires at 03:30 (the skipped 02:30, read with the offset
before the gap), and on the day 02:00-03:00 happens twice it fires once, at the first 02:30. croniter's own
time-zone arithmetic is not used: across the autumn fold it returned a time before the one asked after
(tests/unit/test_schedule.py pins both transitions).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter  # type: ignore[import-untyped]

_SEARCH = 10_000
"""Candidates looked at before giving up (a gap or fold costs one or two)."""


def _utc(wall: datetime, zone: ZoneInfo) -> datetime:
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def _wall(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone).replace(tzinfo=None)


def next_time(expression: str, zone: str, after: datetime) -> datetime:
    """The first cron time strictly after `after`."""
    tz = ZoneInfo(zone)
    times = croniter(expression.strip(), _wall(after, tz))
    for _ in range(_SEARCH):
        found = _utc(times.get_next(datetime), tz)
        if found > after:
            return found
    raise ValueError(f"no time matches {expression!r} after {after.isoformat()}")


def latest_time(expression: str, zone: str, now: datetime) -> datetime:
    """The latest cron time at or before `now`."""
    tz = ZoneInfo(zone)
    times = croniter(expression.strip(), _wall(now, tz) + timedelta(seconds=1))
    for _ in range(_SEARCH):
        found = _utc(times.get_prev(datetime), tz)
        if found <= now:
            return found
    raise ValueError(f"no time matches {expression!r} before {now.isoformat()}")


def due(expression: str, zone: str, last: datetime, now: datetime) -> datetime | None:
    """The cron time a run is due for: the latest one after `last` and at or before `now` (the ones missed in
    between collapse into it, as a CronJob without startingDeadlineSeconds does); None if there is none."""
    latest = latest_time(expression, zone, now)
    return latest if latest > last else None
