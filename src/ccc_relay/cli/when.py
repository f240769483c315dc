"""When a message should be delivered, in the words people use.

``--at`` takes a Unix time (``1767225600``), an ISO 8601 time (``2026-12-24T09:00``,
local time unless it names its zone, ``...Z`` for UTC) or a delay (``10m``, ``2h``,
``90s``, ``1d``); ``--in`` takes a delay. A time in the past is refused rather than
delivered at once: the user meant a later time and wrote it wrong (``--at 10`` for ten
minutes, last year's date), and sending it now would hide that.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import click

from ccc_relay.policy.units import UnitError, parse_duration

# A bare number below this is no Unix time anyone means (it lies before 2001-09-09);
# it is a delay written without its unit.
MIN_UNIX_TIME = 1_000_000_000
# How far in the past --at may lie and still mean "now": the seconds between typing
# and sending.
PAST_GRACE = 5.0


def _delay(text: str) -> float | None:
    try:
        return parse_duration(text)
    except UnitError:
        return None


def duration(seconds: float) -> str:
    """A span as people say it: ``42s``, ``26m 7s``, ``3h 2m``, ``2d 4h`` (two units at most)."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def local_and_utc(ts: float) -> str:
    """``2026-12-24 09:00:00 CET (2026-12-24T08:00:00Z)``: the time to read, and the one
    that means the same wherever it is read."""
    local = datetime.fromtimestamp(ts).astimezone()
    return f"{local:%Y-%m-%d %H:%M:%S %Z} ({iso_utc(ts)})"


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def iso_local(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


class DeliverAt(click.ParamType[float]):
    name = "TIME"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip()
        try:
            at = float(text)  # a Unix time
        except ValueError:
            delay = _delay(text)
            if delay is not None:
                return time.time() + delay
            try:
                at = datetime.fromisoformat(text).timestamp()
            except ValueError:
                self.fail(
                    f"{text!r} is not a time: give a delay (10m, 2h, 1d), an ISO 8601 time "
                    "(2026-12-24T09:00, add Z for UTC) or a Unix time",
                    param,
                    ctx,
                )
        else:
            if at < MIN_UNIX_TIME:
                self.fail(
                    f"{text} is not a time: a bare number is a Unix time (seconds since "
                    f"1970). For a delay give its unit: --in {text}m or --at {text}m",
                    param,
                    ctx,
                )
        if at < time.time() - PAST_GRACE:
            self.fail(
                f"{text} is in the past: {local_and_utc(at)}; give a later time, or leave "
                "--at out to send now",
                param,
                ctx,
            )
        return at


class Delay(click.ParamType[float]):
    name = "DELAY"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        delay = _delay(str(value).strip()) if not isinstance(value, int | float) else value
        if delay is None or delay < 0:
            self.fail(f"{value!r} is not a delay: give 90s, 10m, 2h or 1d", param, ctx)
        return float(delay)


def delivery_fields(deliver_at: float | None) -> dict[str, str | None]:
    """--json: when a scheduled message is delivered (null: at once)."""
    if deliver_at is None:
        return {"deliver_at": None}
    return {"deliver_at": iso_utc(deliver_at), "deliver_at_local": iso_local(deliver_at)}


def delivery_words(deliver_at: float | None, now: float | None = None) -> str:
    """``, delivered at 2026-12-24 09:00:00 CET (2026-12-24T08:00:00Z), in 2d 4h``."""
    if deliver_at is None:
        return ""
    ahead = deliver_at - (time.time() if now is None else now)
    return f", delivered at {local_and_utc(deliver_at)}" + (
        f", in {duration(round(ahead))}" if ahead >= 1 else ""
    )
