"""The one rule for config values, applied by every config dataclass in `__post_init__`, so that a config is checked
wherever it is built: read from a converted directory, from the original's vocabulary, from a preset or `replace`.

A NaN rope_theta or a negative rms_norm_eps decodes garbage without failing, and a boolean lora_rank fails deep in
torch: each is refused here, before any weight is read, in one line naming the field.
"""

import math
from dataclasses import fields, is_dataclass


class ConfigError(ValueError):
    """A config value of the wrong type or out of range. `field` is its dotted name in our config (llm.rope_theta)."""

    def __init__(self, field: str, value, requirement: str):
        self.field, self.value, self.requirement = field, value, requirement
        super().__init__(f"{field} is {value!r}, {requirement}")

    def within(self, section: str) -> "ConfigError":
        """The same error one level up: `rope_theta` inside the `llm` section is `llm.rope_theta`."""
        return ConfigError(f"{section}.{self.field}", self.value, self.requirement)


SEEDS = range(-(2**63), 2**64)  # what torch.Generator.manual_seed takes


def check_config(
    config,
    minimum: dict[str, float] | None = None,
    below: dict[str, float] | None = None,
    maximum: dict[str, float] | None = None,
    why: dict[str, str] | None = None,
) -> None:
    """Every field by its annotated type: an int is a whole number (a bool is not) of at least 1, a float a finite
    number above 0, a bool true or false, a tuple[int, ...] a non-empty tuple of such ints, a config dataclass an
    instance of it. `minimum` sets a field's lowest allowed value instead (inclusive: 0 for lora_rank), `below`
    its bound from above (exclusive), `maximum` (inclusive); `why` adds a field's reason to its message."""
    try:
        _check_fields(config, minimum or {}, below or {}, maximum or {})
    except ConfigError as err:
        if err.field in (why or {}):
            raise ConfigError(
                err.field, err.value, f"{err.requirement} ({why[err.field]})"
            )
        raise


def _check_fields(config, minimum: dict, below: dict, maximum: dict) -> None:
    for spec in fields(config):
        name, value, kind = spec.name, getattr(config, spec.name), spec.type
        if kind is bool and not isinstance(value, bool):
            raise ConfigError(name, value, "not true or false")
        if kind in (int, float):
            number = isinstance(
                value, (int, float) if kind is float else int
            ) and not isinstance(value, bool)
            if not number or not math.isfinite(value):
                raise ConfigError(
                    name,
                    value,
                    "not a whole number" if kind is int else "not a finite number",
                )
            low = minimum.get(name, 1 if kind is int else None)
            if low is None and value <= 0 or low is not None and value < low:
                raise ConfigError(
                    name, value, "not above 0" if low is None else f"below {low}"
                )
            if name in below and value >= below[name]:
                raise ConfigError(name, value, f"not below {below[name]}")
            if name in maximum and value > maximum[name]:
                raise ConfigError(name, value, f"above {maximum[name]:g}")
        if kind == tuple[int, ...] and not _whole_numbers(value):
            raise ConfigError(name, value, "not a list of whole numbers of at least 1")
        if is_dataclass(kind) and not isinstance(value, kind):
            raise ConfigError(name, value, f"not a {kind.__name__}")


def _whole_numbers(value) -> bool:
    """A non-empty tuple of ints of at least 1 (bools are not ints here)."""
    if not isinstance(value, tuple) or not value:
        return False
    return all(type(item) is int and item >= 1 for item in value)


def check_seed(config, name: str = "seed") -> None:
    """An optional seed: None, or a whole number torch's generators take (never a float)."""
    value = getattr(config, name)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value not in SEEDS:
        raise ConfigError(
            name, value, f"not a whole number from {SEEDS.start} to {SEEDS.stop - 1}"
        )


def check_divides(config, part: str, whole: str) -> None:
    """`part` (heads) must divide `whole` (the width they split)."""
    if getattr(config, whole) % getattr(config, part):
        raise ConfigError(
            part, getattr(config, part), f"not a divisor of {getattr(config, whole)}"
        )


def build_section(section: str, build, *args, **values):
    """build(*args, **values): one config section (a dataclass or its reader), a ConfigError named within `section`."""
    try:
        return build(*args, **values)
    except ConfigError as err:
        raise err.within(section) from None
