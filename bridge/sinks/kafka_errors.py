"""The transaction error contract of librdkafka / confluent-kafka, as pure decisions.

What the Kafka sink does with an error depends only on the error and on the call that
raised it; these functions say which, and the unit tests feed them librdkafka's codes:

* ``fatal()``               -> :attr:`Action.FATAL`: the producer is unusable; the sink
  raises a fatal SinkError and the pipeline rebuilds it (``init_transactions`` fences and
  aborts whatever the old producer left open).
* a per-record error no retry can fix (too large, invalid) -> :attr:`Action.REFUSE_RECORD`:
  the pipeline dead-letters that record and re-sends the batch.
* ``txn_requires_abort()``  -> :attr:`Action.ABORT_AND_RESEND`: abort; the pipeline
  re-sends the *same* batch in the same order.
* ``retriable()`` during commit/abort/init -> :attr:`Action.RETRY`: call the same method
  again; the outcome is not known yet, and only another call may resolve it (aborting
  could drop a commit in progress).
* anything else             -> :attr:`Action.FAIL`: abort; the pipeline retries the batch
  after its back-off.
"""

from __future__ import annotations

import enum

from confluent_kafka import KafkaError


class Action(enum.Enum):
    RETRY = "retry"
    ABORT_AND_RESEND = "abort_and_resend"
    REFUSE_RECORD = "refuse_record"
    FAIL = "fail"
    FATAL = "fatal"


#: Per-record errors that no retry can fix: the record goes to the dead-letter topic.
PERMANENT_RECORD_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_MSG,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError._INVALID_ARG,
    }
)


def is_permanent_record_error(err: KafkaError) -> bool:
    """A delivery report error that no retry of this record can fix."""
    return err.code() in PERMANENT_RECORD_ERRORS


def on_produce(err: KafkaError) -> Action:
    """``produce()`` raised (not BufferError: a full local queue is waited out)."""
    if err.code() in PERMANENT_RECORD_ERRORS:
        return Action.REFUSE_RECORD
    if err.fatal():
        return Action.FATAL
    return Action.FAIL


def on_commit(err: KafkaError) -> Action:
    """``commit_transaction()`` raised."""
    if err.fatal():
        return Action.FATAL
    if err.txn_requires_abort():
        return Action.ABORT_AND_RESEND
    if err.retriable():
        return Action.RETRY
    return Action.FAIL


def on_control(err: KafkaError) -> Action:
    """``init_transactions()`` or ``abort_transaction()`` raised: retriable errors are
    retried in place; anything else leaves the producer in a state only a rebuild
    clears."""
    if err.retriable() and not err.fatal():
        return Action.RETRY
    return Action.FATAL


def on_begin(err: KafkaError) -> Action:
    """``begin_transaction()`` raised: a retriable error fails this attempt (the
    pipeline retries the batch); anything else needs a new producer."""
    if err.retriable() and not err.fatal():
        return Action.FAIL
    return Action.FATAL
