"""``source.ons``: the Jushita ONS source's settings."""

from __future__ import annotations

from pydantic import Field

from bridge.config_fields import (
    Name,
    PositiveInt,
)
from bridge.rocketmq.config import RocketMQClientConfig


class OnsSourceConfig(RocketMQClientConfig):
    """Jushita message sync / Alibaba Cloud ONS topics (docs/ons.md).

    Jushita's legacy ONS takes the app key and app secret as AccessKey/SecretKey with
    channel ``CLOUD``; Alibaba Cloud's own ONS uses ``ALIYUN``.
    """

    #: Consumer group (Jushita requires the ``CID_`` prefix there; any name locally).
    group_id: Name
    #: One topic per app on Jushita: ``rmq_sys_jst_<appkey>``.
    topics: list[Name] = Field(min_length=1)
    #: Subscription expression: ``*`` or TMC topic names joined with ``||``.
    tag_expression: Name = "*"
    channel: str = "CLOUD"
    #: One consumer thread per queue, in queue order; a failure suspends the queue
    #: and retries locally instead of sending the message back with a delay.
    orderly: bool = False
    #: Consumer threads. Each one waits for its message to be committed downstream,
    #: so this bounds the messages in flight (and the throughput) in concurrent mode.
    consume_threads: PositiveInt = 64
