"""``check-config --connect`` for ``source.tmc_http``: one signed call that takes nothing.

The call is ``taobao.tmc.auth.get`` for the configured group: the gateway checks the app
key, the signature (secret and sign method), the timestamp and the app's TMC permission
exactly as for a consume, and answers with a login token that is simply not used. A
``taobao.tmc.messages.consume`` would take messages (they come back only after TMC's
confirm timeout), and a ``taobao.tmc.messages.confirm`` with no real id would be refused
for its argument, which proves less and reads like an error. Nothing is consumed or
confirmed.
"""

from __future__ import annotations

import asyncio

from bridge.config_fields import public_url
from bridge.kinds import Reached
from bridge.sources.tmc.top_client import TopCallError, TopClient, TopTransportError
from bridge.sources.tmc_http.config import TmcHttpSourceConfig
from bridge.sources.tmc_http.source import SECTION, _verify

#: The harmless signed call (see the module docstring).
METHOD = "taobao.tmc.auth.get"


def check(config: TmcHttpSourceConfig, timeout_s: float) -> list[Reached]:
    return [asyncio.run(check_async(config, timeout_s))]


async def check_async(config: TmcHttpSourceConfig, timeout_s: float) -> Reached:
    part = f"source tmc_http {public_url(config.url)} group={config.group}"
    client = TopClient(
        config.url,
        config.app_key,
        config.secret(),
        sign_method=config.sign_method,
        timeout_s=min(timeout_s, config.request_timeout_s),
        config_section=SECTION,
        url_key="url",
        verify=_verify(config),  # https://: as the source connects (tls_ca_file)
    )
    try:
        await client.call(METHOD, {"group": config.group}, retry_stale=True)
    except (TopCallError, TopTransportError) as exc:
        return Reached(part, False, str(exc))
    finally:
        await client.aclose()
    return Reached(part, True, f"signed call {METHOD} answered (it consumes nothing)")
