"""CI check of the chart's alert rules and of the bridge's metrics exposition, with promtool.

* The PrometheusRule is rendered by ``helm template`` (without ``--kube-version``: helm is
  built with its version flags) from tests/promtool/values.yaml, and its ``spec`` goes
  through ``promtool check rules --lint=all`` and ``promtool test rules`` with
  tests/promtool/rules_test.yaml, which must make every alert fire at least once.
* What the values promise: ``enabled: false`` removes a rule (all of them: no
  PrometheusRule at all), a rule's ``runbookUrl`` beats ``runbookBaseUrl``, no
  ``runbook_url`` without either, ``selector`` replaces the namespace/pod matchers, no rule
  selects by ``service`` or ``job`` (they must work without the ServiceMonitor), and each
  alert has its section in the README, where ``runbook_url`` points.
* ``promtool check metrics`` on what ``/metrics`` serves (a registry with every family
  filled in), so a name or type the Prometheus conventions reject fails here.

    python scripts/check_rules.py --helm PATH --promtool PATH
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import generate_latest

from bridge.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "tmc-bridge"
TESTS = ROOT / "tests" / "promtool"
VALUES = str(TESTS / "values.yaml")
RUNBOOKS = "https://runbooks.example/README.md"
README = ROOT / "README.md"


class Failed(Exception):
    pass


def run(cmd: list[str], *, stdin: str | None = None) -> str:
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Failed(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def template(helm: str) -> list[str]:
    # No --kube-version: helm is built to assume a current Kubernetes (Makefile).
    return [helm, "template", "rel", str(CHART), "--namespace", "shop", "-f", VALUES]


def rules(helm: str, sets: list[str] | None = None) -> list[dict[str, Any]]:
    """The rendered alert rules ([] when the chart renders no PrometheusRule)."""
    cmd = template(helm)
    for s in sets or []:
        cmd += ["--set", s]
    docs = [d for d in yaml.safe_load_all(run(cmd)) if d]
    found = [d for d in docs if d["kind"] == "PrometheusRule"]
    if not found:
        return []
    (doc,) = found
    return [r for g in doc["spec"]["groups"] for r in g["rules"]]


def spec(helm: str) -> dict[str, Any]:
    cmd = [*template(helm), "--show-only", "templates/prometheusrule.yaml"]
    doc = yaml.safe_load(run(cmd))
    if doc["kind"] != "PrometheusRule":
        raise Failed(f"not a PrometheusRule: {doc['kind']}")
    groups: dict[str, Any] = doc["spec"]
    return groups


def check_values(helm: str, default: list[dict[str, Any]]) -> None:
    names = [r["alert"] for r in default]
    problems = []
    for rule in default:
        expr = rule["expr"]
        if re.search(r"\b(service|job)\s*=", expr):
            problems.append(f"{rule['alert']} selects by service or job")
        if 'namespace="shop", pod=~"rel-tmc-bridge-[0-9]+"' not in expr:
            problems.append(f"{rule['alert']} does not select the release's pods")
        url = rule["annotations"].get("runbook_url")
        if url != f"{RUNBOOKS}#{rule['alert'].lower()}":
            problems.append(f"{rule['alert']}: runbook_url {url}")

    readme = README.read_text(encoding="utf-8")
    for name in names:
        # GitHub's anchor of a heading "#### TmcBridgeX" is "#tmcbridgex".
        if not re.search(rf"^#+ {name}$", readme, re.MULTILINE):
            problems.append(f"README has no runbook section '{name}' (runbook_url's anchor)")

    off = rules(helm, ["metrics.prometheusRule.rules.noMessages.enabled=false"])
    if [r["alert"] for r in off] != [n for n in names if n != "TmcBridgeNoMessages"]:
        problems.append("disabling noMessages did not remove exactly TmcBridgeNoMessages")
    every = [f"metrics.prometheusRule.rules.{k}.enabled=false" for k in _rule_keys()]
    if rules(helm, every):
        problems.append("with every rule disabled a PrometheusRule is still rendered")
    if rules(helm, ["metrics.prometheusRule.enabled=false"]):
        problems.append("metrics.prometheusRule.enabled=false still renders rules")

    own = "metrics.prometheusRule.rules.podDown.runbookUrl=https://wiki/x"
    bare = rules(helm, ["metrics.prometheusRule.runbookBaseUrl=", own])
    urls = {r["alert"]: r["annotations"].get("runbook_url") for r in bare}
    if urls.pop("TmcBridgePodDown") != "https://wiki/x" or any(urls.values()):
        problems.append(f"runbook_url without runbookBaseUrl: {urls}")

    mine = 'kubernetes_namespace="shop", kubernetes_pod_name=~"tmc-[0-9]+"'
    custom = rules(helm, ["metrics.prometheusRule.selector=" + mine.replace(",", "\\,")])
    if not all(mine in r["expr"] and "pod=~" not in r["expr"].replace(mine, "") for r in custom):
        problems.append("selector does not replace the default matchers")
    if problems:
        raise Failed("; ".join(problems))


def _rule_keys() -> list[str]:
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    return list(values["metrics"]["prometheusRule"]["rules"])


def check_tests_cover(default: list[dict[str, Any]]) -> None:
    tests = yaml.safe_load((TESTS / "rules_test.yaml").read_text(encoding="utf-8"))
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    missing = sorted({r["alert"] for r in default} - fired)
    if missing:
        raise Failed(f"rules_test.yaml never makes these fire: {missing}")


def exposition() -> str:
    """What /metrics serves, with a child in every labelled family."""
    m = Metrics()
    now_ms = int(time.time() * 1000)
    m.received("tmc", "taobao_trade_TradeCreate", now_ms - 1500)
    m.duplicate("tmc", "in_flight")
    m.confirm_latency("tmc", 0.05)
    m.failed("tmc", "taobao_trade_TradeCreate")
    m.given_up("tmc")
    m.skipped("tmc", "malformed")
    m.connection_up("tmc", 0, True, "default")
    m.reconnect("tmc", 0, "default")
    m.group_messages("tmc", "default", 0, "received")
    m.filtered("shed-item-events", "drop", "topic")
    m.committed(
        "kafka",
        confirmed=[(("tmc", "taobao_trade_TradeCreate"), 1)],
        topics=[("tmc_trade", 1), ("tmc_dlq", 1)],
        dead=[("taobao_trade_TradeCreate", 1)],
        size=2,
        took_s=0.02,
    )
    m.transaction("kafka", "aborted")
    m.sink_error("kafka", "_TRANSPORT")
    m.sink_up("kafka", lambda: True)
    m.dedup_records.labels("applied").inc()
    return generate_latest(m.registry).decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm", required=True)
    parser.add_argument("--promtool", required=True)
    args = parser.parse_args()
    try:
        with tempfile.TemporaryDirectory(prefix="rules-") as tmp:
            work = Path(tmp)
            (work / "rules.yaml").write_text(yaml.safe_dump(spec(args.helm), sort_keys=False))
            shutil.copy(TESTS / "rules_test.yaml", work)
            out = run([args.promtool, "check", "rules", "--lint=all", str(work / "rules.yaml")])
            print(f"rules: promtool check rules --lint=all: {out.strip().splitlines()[-1].strip()}")
            run([args.promtool, "test", "rules", str(work / "rules_test.yaml")])
            print("rules: promtool test rules: tests/promtool/rules_test.yaml passed")
        default = rules(args.helm)
        check_tests_cover(default)
        check_values(args.helm, default)
        print(f"rules: {len(default)} alerts: enable/disable, runbook_url, selector, README ok")
        text = exposition()
        if "_created" in text:
            raise Failed("the exposition has _created series")
        run([args.promtool, "check", "metrics"], stdin=text)
        families = len(re.findall(r"^# TYPE tmc_bridge_", text, re.MULTILINE))
        print(f"rules: promtool check metrics: {families} tmc_bridge_ families ok")
    except Failed as exc:
        print(f"rules: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
