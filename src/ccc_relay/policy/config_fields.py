"""Reading one config value: the typed field readers every section parser shares.

Each reader takes the section, the key and the dotted prefix that locates the
section (``"daemon.security."``), and returns the value, or the default when
the key is absent. Anything else raises ConfigError with a message that names
the full key and the value as written, so the operator can find the line.
Unknown keys are errors here too (:func:`reject_unknown_keys`), because a
misspelt ``rate_limt`` silently doing nothing is a security bug.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ccc_relay.policy.config_types import ConfigError
from ccc_relay.policy.units import UnitError, parse_duration, parse_rate, parse_size


def reject_unknown_keys(section: Mapping[str, Any], known: set[str], prefix: str) -> None:
    for key in section:
        if key not in known:
            hint = ", ".join(sorted(known))
            raise ConfigError(f"{prefix}{key}: unknown key (known here: {hint})")


def read_section(parent: Mapping[str, Any], key: str, prefix: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{prefix}{key}: expected a mapping, got {value!r}")
    return value


def read_size(section: Mapping[str, Any], key: str, prefix: str, default: int) -> int:
    if key not in section:
        return default
    try:
        return parse_size(section[key])
    except UnitError as exc:
        raise ConfigError(f"{prefix}{key}: {section[key]!r} -- {exc}") from None


def read_duration(
    section: Mapping[str, Any], key: str, prefix: str, default: float, minimum: float = 0.0
) -> float:
    if key not in section:
        return default
    try:
        value = parse_duration(section[key])
    except UnitError as exc:
        raise ConfigError(f"{prefix}{key}: {section[key]!r} -- {exc}") from None
    if value < minimum:
        raise ConfigError(f"{prefix}{key}: {section[key]!r} -- must be at least {minimum:g}s")
    return value


def read_rate(section: Mapping[str, Any], key: str, prefix: str, default: float) -> float:
    if key not in section:
        return default
    try:
        per_minute, _scope = parse_rate(section[key])
    except UnitError as exc:
        raise ConfigError(f"{prefix}{key}: {section[key]!r} -- {exc}") from None
    return per_minute


def read_bool(section: Mapping[str, Any], key: str, prefix: str, default: bool) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{prefix}{key}: {value!r} -- expected true or false")
    return value


def read_positive_int(section: Mapping[str, Any], key: str, prefix: str, default: int) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{prefix}{key}: {value!r} -- expected a positive whole number")
    return value


def read_positive_number(
    section: Mapping[str, Any], key: str, prefix: str, default: float
) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{prefix}{key}: {value!r} -- expected a positive number")
    return float(value)


def read_absolute_path(section: Mapping[str, Any], key: str, prefix: str, default: Path) -> Path:
    value = section.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{prefix}{key}: {value!r} -- expected a path")
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise ConfigError(f"{prefix}{key}: {value!r} -- must be an absolute path")
    return path


def parse_socket_mode(value: object) -> int:
    # YAML 1.1 (PyYAML) reads an unquoted 0660 as the octal integer 432.
    if isinstance(value, str):
        try:
            mode = int(value, 8)
        except ValueError:
            raise ConfigError(
                f"daemon.socket_mode: {value!r} -- expected an octal mode such as 0660"
            ) from None
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise ConfigError(f"daemon.socket_mode: {value!r} -- expected an octal mode such as 0660")
    if mode & ~0o777:
        raise ConfigError(
            f"daemon.socket_mode: {value!r} -- not a permission mode; write it in octal, e.g. 0660"
        )
    if mode & 0o007:
        raise ConfigError(
            f"daemon.socket_mode: {oct(mode)} gives every local user access; "
            "use 0660 with daemon.socket_group"
        )
    if mode & 0o600 != 0o600:
        raise ConfigError(
            f"daemon.socket_mode: {oct(mode)} -- the owner needs read and write (0600)"
        )
    return mode


def read_optional_name(section: Mapping[str, Any], key: str, prefix: str) -> str | None:
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise ConfigError(f"{prefix}{key}: {value!r} -- expected a user or group name")
    return str(value)
