"""Every example config under examples/ (and bridge.yaml) is accepted by the bridge's own
loader, with the variables an operator would set: the README points users at them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge import config as cfgmod

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [*sorted((ROOT / "examples").glob("*.yaml")), ROOT / "bridge.yaml"]

ENV = {
    "HOSTNAME": "tmc-bridge-0",
    "KAFKA_BOOTSTRAP": "kafka:9092",
    "KAFKA_USERNAME": "bridge",
    "KAFKA_PASSWORD": "kafka-password",
    "ONS_ADDR": "http://onsaddr.example.com:8080/rocketmq/nsaddr",
    "ONS_GROUP_ID": "GID_tmc_bridge",
    "ROCKETMQ_ACCESS_KEY": "ak",
    "ROCKETMQ_SECRET_KEY": "sk",
    "ROCKETMQ_NAMESRV": "namesrv:9876",
    "TMC_APP_KEY": "12345678",
    "TMC_APP_SECRET": "app-secret",
}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_example_config_loads(path: Path, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("app-secret")
    env = {**ENV, "TMC_APP_SECRET_FILE": str(secret_file)}
    config = cfgmod.load(path, env=env)
    assert config.source.selected is not None
