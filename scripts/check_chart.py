"""CI check of the Helm chart, without a cluster.

For every values file in helm/tmc-bridge/ci/: ``helm lint --strict``, ``helm template``,
and ``kubernetes-validate --strict`` on the rendered manifests (Kubernetes 1.33 schemas).
Then what no schema knows:

* the ConfigMap's bridge.yaml is a config the bridge accepts (``bridge.config.parse``,
  with the pod's environment), with the per-pod transactional id / producer group, the
  secret file paths and the HTTP port the probes use;
* the StatefulSet runs non-root with a read-only root filesystem, probes /livez and
  /readyz on that port, gives more grace than the drain timeout, and rolls on a config
  change (checksum annotation);
* values that must be refused are refused: an unknown key (values.schema.json), a grace
  period not above the drain timeout, a TMC source without a secret.

    python scripts/check_chart.py --helm PATH --kubernetes-validate PATH
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bridge import config as cfgmod

CHART = Path(__file__).resolve().parent.parent / "helm" / "tmc-bridge"
KUBE = "1.33.0"


class Failed(Exception):
    pass


def run(cmd: list[str], *, want_ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if want_ok and done.returncode != 0:
        raise Failed(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def render(helm: str, values: list[str], sets: list[str] | None = None) -> list[dict[str, Any]]:
    cmd = [helm, "template", "rel", str(CHART), "--namespace", "shop", "--kube-version", KUBE]
    for v in values:
        cmd += ["-f", v]
    for s in sets or []:
        cmd += ["--set", s]
    out = run(cmd).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def check_manifests(docs: list[dict[str, Any]], values_file: Path) -> str:
    kinds = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    sts = kinds[("StatefulSet", "rel-tmc-bridge")]
    pod = sts["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "bridge"]
    bridge_yaml = kinds[("ConfigMap", "rel-tmc-bridge")]["data"]["bridge.yaml"]
    env = {"POD_NAME": "rel-tmc-bridge-0", "KAFKA_SASL_PASSWORD": "not-a-real-one"}
    cfg = cfgmod.parse(yaml.safe_load(bridge_yaml), env=env)

    problems = []
    port = container["ports"][0]["containerPort"]
    if cfg.http.port != port:
        problems.append(f"bridge listens on port {cfg.http.port}, the pod's port is {port}")
    if container["livenessProbe"]["httpGet"]["path"] != "/livez":
        problems.append("liveness probe is not /livez")
    if container["readinessProbe"]["httpGet"]["path"] != "/readyz":
        problems.append("readiness probe is not /readyz")
    if pod["terminationGracePeriodSeconds"] <= cfg.pipeline.drain_timeout_s:
        problems.append("terminationGracePeriodSeconds is not above drain_timeout_s")
    sc = container["securityContext"]
    if not (sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]):
        problems.append("container security context is not restricted")
    if not pod["securityContext"]["runAsNonRoot"]:
        problems.append("pod may run as root")
    if "checksum/config" not in sts["spec"]["template"]["metadata"]["annotations"]:
        problems.append("no checksum/config annotation")
    if container["args"][:1] != ["run"]:
        problems.append("container does not run the bridge")
    if cfg.sink.kafka is not None and cfg.sink.kafka.transactional_id != "shop-rel-tmc-bridge-0":
        problems.append(f"transactional_id is {cfg.sink.kafka.transactional_id!r}")
    if cfg.sink.rocketmq is not None and cfg.sink.rocketmq.producer_group != (
        "shop-rel-tmc-bridge-0"
    ):
        problems.append(f"producer_group is {cfg.sink.rocketmq.producer_group!r}")
    if cfg.source.tmc is not None and cfg.source.tmc.app_secret_file is None:
        problems.append("the TMC secret does not come from the mounted Secret")
    patterns = list(cfg.routing.topics)
    if "*" in patterns and patterns[-1] != "*":
        problems.append(f"routing order lost: {patterns} (the catch-all would match first)")
    if "secret" in bridge_yaml.lower() and "ci-" in bridge_yaml:
        problems.append("a secret value leaked into the ConfigMap")
    if problems:
        raise Failed(f"{values_file.name}: " + "; ".join(problems))
    return f"{cfg.source.type}->{cfg.sink.type}, {len(docs)} manifests"


def must_fail(helm: str, what: str, values: list[str], sets: list[str], expect: str) -> None:
    cmd = [helm, "template", "rel", str(CHART), "--kube-version", KUBE]
    for v in values:
        cmd += ["-f", v]
    for s in sets:
        cmd += ["--set", s]
    done = run(cmd, want_ok=False)
    if done.returncode == 0 or expect not in done.stderr:
        raise Failed(f"{what}: expected a failure mentioning {expect!r}, got:\n{done.stderr}")
    print(f"chart: refused as expected: {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm", required=True)
    parser.add_argument("--kubernetes-validate", required=True)
    args = parser.parse_args()
    try:
        files = sorted((CHART / "ci").glob("*.yaml"))
        if not files:
            raise Failed("no values files in helm/tmc-bridge/ci")
        for values in files:
            run([args.helm, "lint", str(CHART), "--strict", "--kube-version", KUBE,
                 "-f", str(values)])  # fmt: skip
            docs = render(args.helm, [str(values)])
            rendered = yaml.safe_dump_all(docs)
            kv = subprocess.run(
                [args.kubernetes_validate, "-k", KUBE, "--strict", "-"],
                input=rendered, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if kv.returncode != 0:
                raise Failed(f"{values.name}: kubernetes-validate:\n{kv.stdout}{kv.stderr}")
            summary = check_manifests(docs, values)
            print(f"chart: {values.name}: lint, template, validate ok ({summary})")
        kafka = str(CHART / "ci" / "kafka-values.yaml")
        must_fail(args.helm, "unknown value key", [kafka], ["replicaCont=2"], "replicaCont")
        must_fail(args.helm, "unknown config section", [kafka], ["config.piepline.x=1"], "piepline")
        must_fail(
            args.helm, "grace period not above drain", [kafka],
            ["terminationGracePeriodSeconds=30"], "must be above config.pipeline.drain_timeout_s",
        )  # fmt: skip
        must_fail(
            args.helm, "TMC source without a secret", [kafka],
            ["secret.tmcAppSecret="], "set secret.tmcAppSecret",
        )  # fmt: skip
        must_fail(
            args.helm, "Kafka SASL without a password", [kafka],
            ["secret.kafkaSaslPassword="], "set secret.kafkaSaslPassword",
        )  # fmt: skip
        ons = str(CHART / "ci" / "ons-values.yaml")
        must_fail(
            args.helm, "ONS access key without a secret key", [ons],
            ["secret.onsSecretKey="], "set secret.onsSecretKey",
        )  # fmt: skip
    except Failed as exc:
        print(f"chart: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
