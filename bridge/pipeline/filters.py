"""Filter decisions: should a message be dropped, diverted, or passed? Pure, no I/O.

The rules are ``filters`` of the config (:mod:`bridge.config.filters`), tried in order;
the first whose every condition holds decides:

* ``topics``: one of its shell globs matches the TMC topic (case-sensitive, as in
  ``routing.topics``); no ``topics`` = any topic.
* ``sellers``: ``allow`` matches a message *not* from a listed seller, ``deny`` one
  *from* a listed seller. Integers are compared with the message's user id, strings with
  its nick. A message that carries neither an id nor a nick of the kinds the list holds
  cannot be told apart and never matches (dropping is for good: when in doubt, keep).
* ``when_in_flight_above``: the pipeline holds more than this many deliveries (the
  message itself included).

Which rules may match a topic is computed once per topic and cached (a few dozen topics
exist; the cache is bounded for a source that invents names).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.model import SourceMessage

if TYPE_CHECKING:
    # A type only: the config package (YAML, the registry) is not loaded for it.
    from bridge.config.filters import FilterRule

DROP = "drop"
DIVERT = "divert"

#: The fixed reason words (the ``reason`` label, with ``_backlog`` when the rule's
#: threshold applied).
TOPIC = "topic"
SELLER_ALLOW = "seller_allow"
SELLER_DENY = "seller_deny"

_TEXT = {
    TOPIC: "topic",
    SELLER_ALLOW: "seller not in allow-list",
    SELLER_DENY: "seller in deny-list",
}

_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a rule decided for one message."""

    #: ``drop`` or ``divert``.
    action: str
    #: The rule's name.
    rule: str
    #: For people: "topic", "seller not in allow-list", "seller in deny-list", followed
    #: by "; backlog above N" when the rule's threshold applied.
    reason: str
    #: For the metric: topic, seller_allow or seller_deny, plus ``_backlog``.
    label: str
    #: The sink topic of a divert (None for a drop).
    divert_to: str | None = None


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    action: str
    divert_to: str | None
    above: int | None
    #: allow (True) / deny (False) / no seller condition (None).
    allow: bool | None
    ids: frozenset[int]
    nicks: frozenset[str]
    #: The verdict when the rule matches (one object per rule, shared).
    verdict: Verdict

    def seller_matches(self, msg: SourceMessage) -> bool:
        if self.allow is None:
            return True
        uid, nick = msg.user_id, msg.nick
        known = False
        listed = False
        if self.ids and uid is not None:
            known = True
            listed = uid in self.ids
        if not listed and self.nicks and nick is not None:
            known = True
            listed = nick in self.nicks
        if self.allow:
            return known and not listed
        return listed


def _compile(rule: FilterRule) -> tuple[_Rule, re.Pattern[str] | None]:
    sellers = rule.sellers
    allow: bool | None = None
    listed: list[int | str] = []
    if sellers is not None:
        allow = sellers.allow is not None
        listed = list(sellers.allow if sellers.allow is not None else sellers.deny or [])
    word = TOPIC if allow is None else (SELLER_ALLOW if allow else SELLER_DENY)
    text = _TEXT[word]
    label = word
    if rule.when_in_flight_above is not None:
        text += f"; backlog above {rule.when_in_flight_above}"
        label += "_backlog"
    verdict = Verdict(rule.action, rule.name, text, label, rule.divert_to)
    compiled = _Rule(
        name=rule.name,
        action=rule.action,
        divert_to=rule.divert_to,
        above=rule.when_in_flight_above,
        allow=allow,
        ids=frozenset(s for s in listed if isinstance(s, int)),
        nicks=frozenset(s for s in listed if isinstance(s, str)),
        verdict=verdict,
    )
    topics = None
    if rule.topics is not None:
        topics = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in rule.topics))
    return compiled, topics


class Filters:
    """The configured rules, compiled. :meth:`decide` is called once per new message."""

    def __init__(self, rules: Sequence[FilterRule]) -> None:
        compiled = [_compile(rule) for rule in rules]
        self._rules = [rule for rule, _ in compiled]
        self._topic_rx = [rx for _, rx in compiled]
        #: TMC topic -> the rules whose topics match it, in order.
        self._cache: dict[str, tuple[_Rule, ...]] = {}

    def __len__(self) -> int:
        return len(self._rules)

    @property
    def names(self) -> list[str]:
        return [rule.name for rule in self._rules]

    def _for_topic(self, topic: str) -> tuple[_Rule, ...]:
        rules = self._cache.get(topic)
        if rules is None:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            rules = tuple(
                rule
                for rule, rx in zip(self._rules, self._topic_rx, strict=True)
                if rx is None or rx.match(topic)
            )
            self._cache[topic] = rules
        return rules

    def decide(self, msg: SourceMessage, in_flight: int) -> Verdict | None:
        """The verdict of the first rule that matches, or None: pass the message on.

        ``in_flight`` is the number of deliveries the pipeline holds (this one included).
        """
        for rule in self._for_topic(msg.topic):
            if rule.above is not None and in_flight <= rule.above:
                continue
            if rule.seller_matches(msg):
                return rule.verdict
        return None
