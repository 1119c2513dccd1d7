"""Ids in the JSON log are strings, so JavaScript log viewers do not round them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import numpy as np
import pytest
import structlog

from bridge.observability import logging as obs_logging

#: Above 2^53: a JavaScript double reads it as 9007199254740994.
BIG = 2**53 + 1


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure() binds loggers to the captured stdout; undo that for later tests."""
    handlers = logging.getLogger().handlers[:]
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = handlers


def test_ids_above_2_53_reach_the_json_line_as_exact_strings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    obs_logging.configure("info", "json")
    structlog.get_logger("bridge.test").info(
        "batch committed",
        messages=3,
        first_id=BIG,
        last_id=BIG + 2,
        message_ids=[BIG, BIG + 1, np.int64(BIG + 2)],
        message_id=np.int64(2**63 - 1),
        user_id=2200000001,
        id=7,
        ids=(1, 2),
        sink_ms=1.5,
        dead_lettered=0,
        msg_id="C0A80001000078F4",
        transactional_id="shop-tmc-bridge-0",
        connection_id=None,
        valid_id=True,
    )
    line = json.loads(capsys.readouterr().out)
    assert line["first_id"] == "9007199254740993"
    assert line["last_id"] == str(BIG + 2)
    assert line["message_ids"] == [str(BIG), str(BIG + 1), str(BIG + 2)]
    assert line["message_id"] == "9223372036854775807"
    assert line["user_id"] == "2200000001"
    assert (line["id"], line["ids"]) == ("7", ["1", "2"])
    # Counts and other numbers stay numbers; strings, None and flags are left alone.
    assert (line["messages"], line["sink_ms"], line["dead_lettered"]) == (3, 1.5, 0)
    assert line["msg_id"] == "C0A80001000078F4"
    assert line["transactional_id"] == "shop-tmc-bridge-0"
    assert line["connection_id"] is None and line["valid_id"] is True


@pytest.mark.parametrize(
    ("name", "is_id"),
    [
        ("id", True),
        ("ids", True),
        ("message_id", True),
        ("first_id", True),
        ("message_ids", True),
        ("committed_ids", True),
        ("messages", False),
        ("idle_s", False),
        ("pid", False),
        ("valid", False),
        ("identity", False),
    ],
)
def test_which_fields_count_as_ids(name: str, is_id: bool) -> None:
    assert obs_logging.is_id_field(name) is is_id
