"""``filters``: rules that drop or divert messages by topic and seller, optionally only
while the pipeline is far behind (load shedding). The decisions are
:mod:`bridge.pipeline.filters`'; this module only validates the rules.

Each rule is tried in order, the first that matches wins. Checks that need other
sections (the sink's topic rule for ``divert_to``, ``pipeline.max_in_flight`` for the
threshold) are :func:`filter_problems`, called by :class:`~bridge.config.BridgeConfig`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from pydantic import field_validator, model_validator

from bridge.config_fields import PositiveInt, _Model, _Problems

#: A rule name is a Prometheus label value and a header value: short and plain.
RULE_NAME = re.compile(r"^[a-z0-9_-]{1,40}$")


def _seller_problems(sellers: object) -> str | None:
    if not isinstance(sellers, list):
        return "must be a list of user ids (integers) and nicks (strings)"
    if not sellers:
        return "list at least one seller (leave the key out instead)"
    for i, seller in enumerate(sellers):
        if isinstance(seller, bool) or not isinstance(seller, int | str):
            return f"item {i}: a seller is a user id (an integer) or a nick (a string)"
        if isinstance(seller, int) and seller <= 0:
            return f"item {i}: a user id is a positive integer"
        if isinstance(seller, str) and (not seller.strip() or seller != seller.strip()):
            return f"item {i}: a nick must not be empty or start or end with a space"
    return None


class SellersConfig(_Model):
    """Exactly one of ``allow`` (the rule matches messages *not* from these sellers) and
    ``deny`` (it matches messages from these sellers). Integers are user ids, strings
    nicks (quote nothing that is an id: a quoted ``"2200000001"`` is a nick)."""

    allow: list[int | str] | None = None
    deny: list[int | str] | None = None

    @field_validator("allow", "deny", mode="before")
    @classmethod
    def _sellers(cls, value: object) -> object:
        # Before pydantic's own conversion: true/2.5/"12" must not become ids silently.
        if value is not None and (problem := _seller_problems(value)) is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> SellersConfig:
        if (self.allow is None) == (self.deny is None):
            raise ValueError("give exactly one of allow and deny")
        return self


class FilterRule(_Model):
    #: Unique; the ``rule`` label of ``tmc_bridge_filter_messages_total``.
    name: str
    #: Shell globs of TMC topics; None = any topic.
    topics: list[str] | None = None
    sellers: SellersConfig | None = None
    #: The rule applies only while the pipeline holds more than this many deliveries.
    when_in_flight_above: PositiveInt | None = None
    action: Literal["drop", "divert"]
    #: The sink topic diverted messages go to (divert only).
    divert_to: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not RULE_NAME.match(value):
            raise ValueError(
                "use 1 to 40 characters of a-z, 0-9, _ and - (it is a metric label value)"
            )
        return value

    @field_validator("topics")
    @classmethod
    def _topics(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError('list at least one pattern (leave the key out, or use "*", for any)')
        if any(not pattern.strip() for pattern in value):
            raise ValueError("a pattern is empty")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> FilterRule:
        problems = []
        if self.topics is None and self.sellers is None:
            why = 'give topics or sellers, or both (for every topic, say so: topics: ["*"])'
            problems.append(("topics", why))
        if self.action == "divert" and self.divert_to is None:
            problems.append(("divert_to", "required when action is divert"))
        if self.action == "drop" and self.divert_to is not None:
            problems.append(("divert_to", "only for action divert (a drop goes nowhere)"))
        if problems:
            raise _Problems(*problems)
        return self


def filter_problems(
    rules: list[FilterRule], *, max_in_flight: int, topic_problem: Callable[[str], str | None]
) -> list[tuple[str, str]]:
    """Problems that need more than one rule, or other sections, as (key under
    ``filters``, problem): names given twice, a ``divert_to`` the sink refuses, a
    threshold the pipeline can never exceed."""
    problems: list[tuple[str, str]] = []
    first_of: dict[str, int] = {}
    for i, rule in enumerate(rules):
        seen = first_of.setdefault(rule.name, i)
        if seen != i:
            problems.append((f"{i}.name", f"{rule.name!r} is the name of filters.{seen} too"))
        if rule.divert_to is not None and (problem := topic_problem(rule.divert_to)):
            problems.append((f"{i}.divert_to", problem))
        above = rule.when_in_flight_above
        if above is not None and above >= max_in_flight:
            problems.append(
                (
                    f"{i}.when_in_flight_above",
                    f"{above} can never be exceeded: the pipeline holds at most "
                    f"pipeline.max_in_flight ({max_in_flight}) deliveries; use a smaller number",
                )
            )
    return problems
