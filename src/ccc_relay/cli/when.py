"""When a message should be delivered, in the words people use.

``--at`` takes a Unix time (``1767225600``), an ISO 8601 time (``2026-12-24T09:00``,
local time unless it names its zone, ``...Z`` for UTC) or a delay (``10m``, ``2h``,
``90s``, ``1d``); ``--in`` takes a delay.
"""

from __future__ import annotations

import time
from datetime import datetime

import click

from ccc_relay.policy.units import UnitError, parse_duration


def _delay(text: str) -> float | None:
    try:
        return parse_duration(text)
    except UnitError:
        return None


class DeliverAt(click.ParamType[float]):
    name = "TIME"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        text = str(value).strip()
        try:
            return float(text)  # a Unix time
        except ValueError:
            pass
        delay = _delay(text)
        if delay is not None:
            return time.time() + delay
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            self.fail(
                f"{text!r} is not a time: give a delay (10m, 2h, 1d), an ISO 8601 time "
                "(2026-12-24T09:00, add Z for UTC) or a Unix time",
                param,
                ctx,
            )


class Delay(click.ParamType[float]):
    name = "DELAY"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        delay = _delay(str(value).strip()) if not isinstance(value, int | float) else value
        if delay is None or delay < 0:
            self.fail(f"{value!r} is not a delay: give 90s, 10m, 2h or 1d", param, ctx)
        return float(delay)
