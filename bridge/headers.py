"""Names of the headers (Kafka) and user properties (RocketMQ) the bridge writes.

Shared by the router that sets them, the sinks that read some back (the RocketMQ journal
keys by message id) and the sources that add their own; no adapter imports another for a
name. The ``tmc.*`` names are the record's metadata whatever the source (an ONS message
carries the same TMC event), so consumers read one schema.
"""

from __future__ import annotations

H_TOPIC = "tmc.topic"
H_MESSAGE_ID = "tmc.message_id"
H_USER_ID = "tmc.user_id"
H_PUBLISH_TIME = "tmc.publish_time_ms"
H_PUBLISHER = "tmc.publisher"
#: The TMC group the message came through (TMC sources only).
H_GROUP = "tmc.group"
H_DLQ_REASON = "tmc.dlq.reason"
H_DLQ_TARGET = "tmc.dlq.target_topic"
H_DLQ_TRUNCATED = "tmc.dlq.truncated"
#: On a record a filter rule diverted (``filters``, action divert): the rule's name.
H_FILTER_RULE = "tmc.filter.rule"

#: Source-specific metadata of the ONS source (the RocketMQ message it came from).
H_ONS_MSG_ID = "ons.msg_id"
H_ONS_TAGS = "ons.tags"
H_ONS_KEYS = "ons.keys"
H_ONS_RECONSUME = "ons.reconsume_times"
H_ONS_QUEUE = "ons.queue"
H_ONS_BORN = "ons.born_timestamp"
