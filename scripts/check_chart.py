"""CI check of the Helm chart, without a cluster.

For every values file in helm/tmc-bridge/ci/: ``helm lint --strict``, ``helm template``,
and ``kubernetes-validate --strict`` on the rendered manifests (Kubernetes 1.33 schemas).
Then what no schema knows:

* the ConfigMap's bridge.yaml is a config the bridge accepts (``bridge.config.parse``,
  with the pod's environment), with the per-pod transactional id / producer group, the
  secret file paths and the HTTP port the probes use;
* the certificate paths in it (``source.tmc(_http).tls_ca_file``, ``sink.kafka.extra``
  ``ssl.ca.location`` / ``ssl.certificate.location`` / ``ssl.key.location``) are files
  of the Secret volumes of ``tls.*``, each mounted read-only, mode 0440 with an fsGroup
  (so uid 10001 reads them), and every such volume is used; librdkafka then loads real
  PEM files put at those paths (an encrypted client key with the Secret's password);
* the StatefulSet runs non-root with a read-only root filesystem, probes /livez and
  /readyz on that port, gives more grace than the drain timeout, and rolls on a config
  change (checksum annotation);
* values that must be refused are refused: an unknown key (values.schema.json), a grace
  period not above the drain timeout, a TMC source without a secret, transactional
  RocketMQ without persistence, a secret in the ConfigMap, certificates for a plaintext
  Kafka or the wrong source or sink, an encrypted client key without its password;
* the README's ``helm install`` command, exactly as written there, renders manifests that
  validate and a config the bridge starts with (``parse`` with the pod's environment, then
  ``check_runtime`` with the Secret's files); every id-like value given as a number
  (``--set config.source.tmc.app_key=12345678``) reaches the bridge as a string;
* the ``config`` part of values.schema.json is what :func:`config_schema` generates from
  the bridge's config models (``--write-schema`` rewrites it after a model change).

    python scripts/check_chart.py --helm PATH --kubernetes-validate PATH
    python scripts/check_chart.py --write-schema
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from bridge import config as cfgmod
from bridge import registry

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "tmc-bridge"
SCHEMA = CHART / "values.schema.json"
KUBE = "1.33.0"
SECRETS_DIR = "/etc/tmc-bridge/secrets"
#: Where the chart mounts tls.*'s Secrets (tmc-bridge.tlsVolumes in _helpers.tpl).
TLS_DIR = "/etc/tmc-bridge/tls"
#: The pod's config keys that name a certificate file, and the volume each must be on.
TLS_PATHS = {
    "tls_ca_file": "tls-tmc-ca",
    "ssl.ca.location": "tls-kafka-ca",
    "ssl.certificate.location": "tls-kafka-client",
    "ssl.key.location": "tls-kafka-client",
}


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


# values.schema.json's `config`, generated from the bridge's own config models, so a typo
# or a wrong type fails `helm install` instead of crash-looping the pod.

#: What the chart sets itself (secret file paths, per-pod ids, the journal folder). Left out
#: of the schema, so they are refused in values: a secret never lands in the ConfigMap.
CHART_OWNED = {
    "tmc": {"app_secret", "app_secret_file"},
    "tmc_http": {"app_secret", "app_secret_file"},
    "ons": {"secret_key", "secret_key_file"},
    "kafka": {"transactional_id"},
    "rocketmq": {"producer_group", "journal_dir", "secret_key", "secret_key_file"},
}
#: Names and ids the chart renders as strings (tmc-bridge.config in _helpers.tpl): the
#: schema lets a whole number through, which `--set key=12345678` makes of them.
ID_KEYS = {
    "tmc": {"app_key", "group"},
    "tmc_http": {"app_key", "group"},
    "ons": {"access_key", "group_id", "tag_expression", "channel", "instance_name"},
    "rocketmq": {"access_key", "channel", "instance_name"},
}
#: TMC group names: the platform's rule (bridge.config_fields.group_name_problem).
GROUP_KEYS = {("tmc", "group"), ("tmc_http", "group")}
#: URL keys and their schemes (the bridge parses them fully at start-up).
URL_KEYS = {
    ("tmc", "url"): "wss?",
    ("tmc", "api_url"): "https?",
    ("tmc_http", "url"): "https?",
    ("ons", "name_server_domain"): "https?",
    ("rocketmq", "name_server_domain"): "https?",
}
_DROPPED = {"title", "default", "format", "writeOnly", "description", "required", "$defs"}


def _id_schema(group: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": ["string", "integer"],
        "minimum": 0,
        "maximum": 2**53 - 1,
        "description": "a string; a whole number (--set key=12345678) is rendered as one",
    }
    if group:
        schema["maxLength"] = 32
        schema["not"] = {"type": "string", "pattern": "^default."}
        schema["description"] += (
            "; a TMC group: at most 32 characters, not starting with 'default' unless it is"
        )
    return schema


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """pydantic's JSON schema of a field -> the chart's: $refs inlined, null left out
    (Helm drops null values), no titles or defaults (values.yaml holds the defaults)."""
    if "$ref" in node:
        return _convert(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in node:
        alternatives = [a for a in node["anyOf"] if a.get("type") != "null"]
        if len(alternatives) == 1:
            return _convert(alternatives[0], defs)
        return {"anyOf": [_convert(a, defs) for a in alternatives]}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert(value, defs)
        else:
            out[key] = value
    if "enum" in out:
        out.pop("type", None)
    return out


def _section_schema(name: str, model: type[BaseModel]) -> dict[str, Any]:
    js = model.model_json_schema()
    schema = _convert(js, js.get("$defs", {}))
    props = schema["properties"]
    for key in CHART_OWNED.get(name, set()):
        props.pop(key, None)
    for key in ID_KEYS.get(name, set()):
        props[key] = _id_schema(group=(name, key) in GROUP_KEYS)
    for (section, key), schemes in URL_KEYS.items():
        if section == name:
            props[key] = {"type": "string", "pattern": f"^{schemes}://\\S+$"}
    if name == "tmc":
        props["groups"]["items"]["properties"]["name"] = _id_schema(group=True)
    if name == "ons":
        props["topics"]["items"] = {k: v for k, v in _id_schema().items() if k != "description"}
    if name == "kafka":
        props["dedup"]["properties"]["topic"] = _id_schema()
    return schema


def _routes(values: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "array",
        "description": "a list of one-entry maps, so the order survives Helm: first match wins",
        "items": {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 1,
            "additionalProperties": values,
        },
    }


def config_schema() -> dict[str, Any]:
    """The `config` property of values.schema.json."""
    topic = {k: v for k, v in _id_schema().items() if k != "description"}
    fields = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}
    routing: dict[str, Any] = {
        "type": "object",
        "properties": {
            "topics": _routes(topic),
            "keys": _routes(fields),
            "missing_key": {"enum": ["dead_letter", "dataid", "userid", "unkeyed"]},
            "dead_letter_topic": _id_schema(),
            "dead_letter_max_value_bytes": {"type": "integer", "exclusiveMinimum": 0},
            "max_json_depth": {"type": "integer", "exclusiveMinimum": 0, "maximum": 500},
            "groups": {
                "type": "object",
                "description": "a TMC group's own routes, by group name",
                "additionalProperties": {
                    "type": "object",
                    "properties": {"topics": _routes(topic), "keys": _routes(fields)},
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    }
    model_routing = set(cfgmod.RoutingConfig.model_fields)
    if set(routing["properties"]) != model_routing:
        raise Failed(
            f"config_schema(): routing keys {sorted(routing['properties'])} are not the "
            f"model's {sorted(model_routing)}: update the routing part of config_schema()"
        )

    def section(kinds: dict[str, Any], description: str) -> dict[str, Any]:
        props: dict[str, Any] = {"type": {"enum": list(kinds)}}
        for name, kind in kinds.items():
            props[name] = _section_schema(name, kind.config)
        return {
            "type": "object",
            "properties": props,
            "additionalProperties": False,
            "description": description,
        }

    return {
        "type": "object",
        "properties": {
            "source": section(
                registry.SOURCES,
                "type picks the source; only its section reaches the bridge. Secrets go "
                "under secret.*, never here",
            ),
            "sink": section(
                registry.SINKS,
                "type picks the sink; the chart sets transactional_id / producer_group "
                "and journal_dir",
            ),
            "routing": routing,
            "pipeline": _section_schema("pipeline", cfgmod.PipelineConfig),
            "log": _section_schema("log", cfgmod.LogConfig),
            "filters": {
                "type": "array",
                "items": {"type": "object"},
                "description": "drop or divert rules, checked by the bridge at start-up",
            },
        },
        "additionalProperties": False,
        "required": ["source", "sink"],
        "description": "bridge.yaml without secrets and without http (the chart sets it)",
    }


def write_schema() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    schema["properties"]["config"] = config_schema()
    SCHEMA.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")


def check_schema() -> None:
    current = json.loads(SCHEMA.read_text(encoding="utf-8"))["properties"]["config"]
    if current != config_schema():
        raise Failed(
            "the config part of values.schema.json does not match the bridge's config "
            "models: run `.venv/bin/python scripts/check_chart.py --write-schema` and "
            "review the diff (keys the chart sets itself: CHART_OWNED in that script)"
        )
    print("chart: values.schema.json config matches the bridge's config models")


def pod_env(
    container: dict[str, Any], pod_name: str, secret_data: dict[str, str]
) -> dict[str, str]:
    """The environment the bridge container would get (what the config's ${VAR}s see)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        source = item.get("valueFrom", {})
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = pod_name
        elif "secretKeyRef" in source:
            env[item["name"]] = secret_data[source["secretKeyRef"]["key"]]
    return env


def secret_files(docs: list[dict[str, Any]], pod: dict[str, Any]) -> dict[str, str]:
    """The files of the mounted Secret: the rendered one's, or placeholders for every key
    of an existing Secret (secret.existingSecret: not part of the release)."""
    (volume,) = [v for v in pod["volumes"] if v["name"] == "secrets"]
    name = volume["secret"]["secretName"]
    for doc in docs:
        if doc["kind"] == "Secret" and doc["metadata"]["name"] == name:
            return {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
    keys = (
        "tmc-app-secret", "ons-secret-key", "rocketmq-secret-key", "kafka-sasl-password",
        "kafka-ssl-key-password",
    )  # fmt: skip
    return {key: f"existing-{key}" for key in keys}


def bridge_config(
    docs: list[dict[str, Any]], namespace: str
) -> tuple[cfgmod.BridgeConfig, dict[str, Any], str, str]:
    """What the first pod would load: the ConfigMap's bridge.yaml through the bridge's own
    loader (``load``: the file as the pod reads it, with the pod's environment), then the
    checks ``run`` makes before starting (``check_runtime``), with the Secret's files in
    place of /etc/tmc-bridge/secrets. Returns (config, StatefulSet, bridge.yaml, expected
    per-pod id)."""
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    name = sts["metadata"]["name"]
    pod = sts["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "bridge"]
    (cm_volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    (cm,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_volume["configMap"]["name"]
    ]
    bridge_yaml = cm["data"]["bridge.yaml"]
    files = secret_files(docs, pod)
    env = pod_env(container, f"{name}-0", files)
    cfg = cfgmod.parse(yaml.safe_load(bridge_yaml), env=env)
    with tempfile.TemporaryDirectory() as tmp:
        for key, value in files.items():
            (Path(tmp) / key).write_text(value, encoding="utf-8")
        # The certificate Secrets (not part of the release) as a correct one would hold
        # them, at the mounted paths under tmp: librdkafka loads them in check_runtime.
        moved = {SECRETS_DIR: tmp}
        kafka = cfg.sink.get(cfgmod.KafkaSinkConfig)
        key_password = str(kafka.extra.get("ssl.key.password", "")) if kafka else ""
        for mount_path, items in secret_mounts(pod, container).items():
            if mount_path == SECRETS_DIR:
                continue
            moved[mount_path] = f"{tmp}/mnt{mount_path}"
            write_pem_files(Path(moved[mount_path]), items, key_password)
        alternatives = "|".join(re.escape(m) for m in sorted(moved, key=len, reverse=True))
        local = re.sub(f"({alternatives})(?=/)", lambda m: moved[m[1]], bridge_yaml)
        path = Path(tmp) / "bridge.yaml"
        path.write_text(local, encoding="utf-8")
        cfgmod.check_runtime(cfgmod.load(path, env=env))
    return cfg, sts, bridge_yaml, f"{namespace}-{name}-0"


def secret_mounts(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, list[str]]:
    """mountPath -> the file names of the Secret volume mounted there."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    out: dict[str, list[str]] = {}
    for mount in container["volumeMounts"]:
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is not None and "subPath" not in mount:
            out[mount["mountPath"].rstrip("/")] = [i["path"] for i in secret.get("items", [])]
    return out


def _openssl(*args: str, env: dict[str, str] | None = None) -> None:
    run_env = None if env is None else {**os.environ, **env}
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, env=run_env,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise Failed(f"openssl {args[0]}: {done.stderr.strip()}")


def write_pem_files(directory: Path, names: list[str], key_password: str) -> None:
    """What the Secret behind a tls.* mount holds: a CA certificate for each bundle,
    tls.crt / tls.key a client certificate and its key (encrypted with ``key_password``
    when there is one, as tls.kafkaClientCert.encryptedKey promises)."""
    directory.mkdir(parents=True)
    subject = ["-subj", "/CN=check_chart", "-days", "1", "-nodes"]
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    for name in names:
        if name == "tls.key":
            continue
        out = directory / name
        key = directory / ("tls.key" if name == "tls.crt" else f".{name}.key")
        _openssl("req", "-x509", *ec, *subject, "-keyout", str(key), "-out", str(out))
        if name == "tls.crt" and key_password:
            plain = key.rename(directory / ".tls.key.plain")
            _openssl("pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", str(plain),
                     "-out", str(key), "-passout", "env:KEY_PASSWORD",
                     env={"KEY_PASSWORD": key_password})  # fmt: skip


def tls_problems(cfg: cfgmod.BridgeConfig, sts: dict[str, Any]) -> list[str]:
    """The certificate paths in the config are files of tls.*'s Secret mounts, mounted
    read-only with mode 0440 for an fsGroup (uid 10001 reads them through the group), and
    every tls-* / ca-bundle-* volume is such a mount (tls-* ones used by the config)."""
    pod = sts["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "bridge"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    problems: list[str] = []
    paths: dict[str, str] = {}
    source = cfg.source.selected
    if getattr(source, "tls_ca_file", None) is not None:
        paths["tls_ca_file"] = str(source.tls_ca_file)
    kafka = cfg.sink.get(cfgmod.KafkaSinkConfig)
    for key in ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location"):
        if kafka is not None and key in kafka.extra:
            paths[key] = str(kafka.extra[key])
    used = set()
    for key, path in paths.items():
        if not path.startswith(TLS_DIR + "/"):
            continue  # the user's own path (config wins over tls.*)
        name = TLS_PATHS[key]
        used.add(name)
        mount, volume = mounts.get(name), volumes.get(name, {}).get("secret")
        if mount is None or volume is None:
            problems.append(f"{key} {path}: no {name} Secret volume mounted")
            continue
        files = [f"{mount['mountPath'].rstrip('/')}/{i['path']}" for i in volume["items"]]
        if path not in files:
            problems.append(f"{key} {path} is not a file of the {name} mount {files}")
    for name, volume in volumes.items():
        if not name.startswith(("tls-", "ca-bundle-")):
            continue
        if "secret" not in volume or name not in mounts:
            problems.append(f"volume {name} is not a mounted Secret")
            continue
        mode = volume["secret"].get("defaultMode")
        if mode != 0o440:
            problems.append(f"volume {name} has mode {mode!r}, not 0440")
        if not mounts[name].get("readOnly"):
            problems.append(f"volume {name} is mounted writable")
        if name.startswith("tls-") and name not in used:
            problems.append(f"volume {name} is mounted but the config does not use it")
        if not pod["securityContext"].get("fsGroup"):
            problems.append(f"volume {name}: no fsGroup, uid 10001 cannot read mode 0440")
    return problems


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def check_manifests(docs: list[dict[str, Any]], what: str, namespace: str = "shop") -> str:
    cfg, sts, bridge_yaml, pod_id = bridge_config(docs, namespace)
    pod = sts["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "bridge"]
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]

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
    kafka = cfg.sink.get(cfgmod.KafkaSinkConfig)
    if kafka is not None and kafka.transactional_id != pod_id:
        problems.append(f"transactional_id is {kafka.transactional_id!r}, not {pod_id}")
    rmq = cfg.sink.get(cfgmod.RocketMQSinkConfig)
    if rmq is not None and rmq.producer_group != pod_id:
        problems.append(f"producer_group is {rmq.producer_group!r}, not {pod_id}")
    for section in (cfg.source.selected, cfg.sink.selected):
        for key in ("app_secret_file", "secret_key_file"):
            path = getattr(section, key, None)
            if path is not None and not str(path).startswith(SECRETS_DIR + "/"):
                problems.append(f"{key} is not in the mounted Secret")
    if (
        getattr(cfg.source.selected, "app_key", "")
        and getattr(cfg.source.selected, "app_secret_file", None) is None
    ):
        problems.append("the TMC secret does not come from the mounted Secret")
    patterns = list(cfg.routing.topics)
    if "*" in patterns and patterns[-1] != "*":
        problems.append(f"routing order lost: {patterns} (the catch-all would match first)")
    problems += tls_problems(cfg, sts)
    if "secret" in bridge_yaml.lower() and "ci-" in bridge_yaml:
        problems.append("a secret value leaked into the ConfigMap")
    if rmq is not None:
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        shared = "persistentVolumeClaim" in volumes.get("data", {})
        if not str(rmq.journal_dir).startswith(mounts["data"] + "/"):
            problems.append(f"journal_dir {rmq.journal_dir} is not on the data volume")
        if shared and not str(rmq.journal_dir).endswith(pod_id.removeprefix(f"{namespace}-")):
            problems.append("pods sharing persistence.existingClaim share one journal folder")
        if rmq.mode == "transactional" and "emptyDir" in volumes.get("data", {}):
            problems.append("the transactional journal is on an emptyDir")
    standard = ("name", "instance", "version", "managed-by", "component")
    missing = [k for k in standard if f"app.kubernetes.io/{k}" not in pod_labels]
    if missing:
        problems.append(f"pod labels lack app.kubernetes.io/{{{','.join(missing)}}}")
    selectors = [("StatefulSet", sts["spec"]["selector"]["matchLabels"])]
    for doc in docs:
        if doc["kind"] == "Service":
            selectors.append(("Service", doc["spec"]["selector"]))
        elif doc["kind"] in ("PodDisruptionBudget", "PodMonitor"):
            selectors.append((doc["kind"], doc["spec"]["selector"]["matchLabels"]))
        elif doc["kind"] == "NetworkPolicy":
            selectors.append(("NetworkPolicy", doc["spec"]["podSelector"]["matchLabels"]))
    tests = [
        d
        for d in docs
        if d["kind"] == "Pod" and d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
    ]
    for kind, selector in selectors:
        if not selects(selector, pod_labels):
            problems.append(f"the {kind} does not select the bridge pods")
        problems += [
            f"the {kind} selects the test pod {t['metadata']['name']}"
            for t in tests
            if selects(selector, t["metadata"]["labels"])
        ]
    if not tests:
        problems.append("no helm test pod")
    if problems:
        raise Failed(f"{what}: " + "; ".join(problems))
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


def validate(kubernetes_validate: str, docs: list[dict[str, Any]], what: str) -> None:
    """kubernetes-validate --strict on the rendered manifests (Kubernetes 1.33 schemas)."""
    kv = subprocess.run(
        [kubernetes_validate, "-k", KUBE, "--strict", "-"],
        input=yaml.safe_dump_all(docs), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if kv.returncode != 0:
        raise Failed(f"{what}: kubernetes-validate:\n{kv.stdout}{kv.stderr}")


def readme_install_command() -> list[str]:
    """The README's `helm install` command, as a user would paste it (continuation lines
    joined, comments dropped, $VARIABLES from a placeholder environment)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```sh\n(.*?)^```", text, flags=re.M | re.S)
    found = [b for b in blocks if re.search(r"^helm install ", b, flags=re.M)]
    if len(found) != 1:
        raise Failed(f"README.md: expected one sh block with `helm install`, found {len(found)}")
    start = re.search(r"^helm install .*?(?<!\\)$", found[0], flags=re.M | re.S)
    assert start is not None
    command = start.group(0).replace("\\\n", " ")
    env = {"TMC_APP_SECRET": "readme-app-secret"}
    return [
        re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env[m[1] or m[2]], arg)
        for arg in shlex.split(command, comments=True)
    ]


def check_readme_install(helm: str, kubernetes_validate: str) -> None:
    argv = readme_install_command()
    if argv[:2] != ["helm", "install"]:
        raise Failed(f"README install command does not start with helm install: {argv}")
    cmd = [helm, "template", *argv[2:], "--kube-version", KUBE]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise Failed(f"README's helm install command does not render:\n{done.stderr}")
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    validate(kubernetes_validate, docs, "README install")
    namespace = argv[argv.index("-n") + 1] if "-n" in argv else "default"
    summary = check_manifests(docs, "README install", namespace)
    cfg = bridge_config(docs, namespace)[0]
    app_key = getattr(cfg.source.selected, "app_key", None)
    if not isinstance(app_key, str):
        raise Failed(f"README install: app_key reaches the bridge as {app_key!r}")
    print(f"chart: README's helm install command: template, validate, load ok ({summary})")


def lookup(obj: Any, path: str) -> Any:
    """``source.tmc.groups[0].name`` in a parsed config (routing maps by pattern)."""
    for token in path.split("."):
        if isinstance(obj, dict):
            obj = obj[token]
            continue
        name, _, index = token.partition("[")
        obj = getattr(obj, name)
        if index and not isinstance(obj, dict):
            obj = obj[int(index.rstrip("]"))]
    return obj


#: (values file, --set of whole numbers): each must reach the bridge as a string.
NUMBER_CASES = [
    ("kafka-values.yaml", [
        "config.source.tmc.app_key=12345678", "config.source.tmc.group=2024",
        "config.routing.dead_letter_topic=404", "config.routing.topics[0].taobao_trade_*=7",
        "config.routing.topics[1].*=8", "config.sink.kafka.dedup.topic=1001",
    ]),
    ("kafka-values.yaml", [
        "config.source.tmc.group=null", "config.source.tmc.groups[0].name=3001",
        "config.source.tmc.groups[1].name=3002",
    ]),
    ("kafka-values.yaml", [
        "config.source.type=tmc_http", "config.source.tmc_http.app_key=23456789",
        "config.source.tmc_http.group=4001",
    ]),
    ("ons-values.yaml", [
        "config.source.ons.access_key=34567890", "config.source.ons.group_id=5001",
        "config.source.ons.topics[0]=6001", "config.source.ons.tag_expression=7",
        "config.source.ons.instance_name=8", "config.source.ons.channel=9",
    ]),
    ("rocketmq-values.yaml", [
        "config.sink.rocketmq.access_key=45678901", "config.sink.rocketmq.instance_name=10",
        "config.sink.rocketmq.channel=11", "instanceIdPrefix=12",
    ]),
]  # fmt: skip


def check_numbers(helm: str) -> None:
    for values, sets in NUMBER_CASES:
        docs = render(helm, [str(CHART / "ci" / values)], sets)
        prefix = next((s.split("=")[1] for s in sets if s.startswith("instanceIdPrefix=")), "shop")
        cfg = bridge_config(docs, prefix)[0]
        for item in sets:
            key, _, number = item.partition("=")
            if not key.startswith("config.") or number == "null" or not number.isdigit():
                continue
            got = lookup(cfg, key.removeprefix("config."))
            if got != number:
                raise Failed(f"--set {item}: the bridge got {got!r}, not the string {number!r}")
        print(f"chart: whole numbers reach the bridge as strings: {values} --set {' '.join(sets)}")


def check_tls_user_paths(helm: str) -> None:
    """A certificate path set in `config` wins over tls.*'s (the Secret is still mounted)."""
    own = {
        "source.tmc.tls_ca_file": "/etc/tmc-bridge/tls/tmc/proxy.pem",
        "sink.kafka.extra.ssl\\.ca\\.location": "/etc/ssl/certs/ca-certificates.crt",
    }
    docs = render(helm, [str(CHART / "ci" / "tls-values.yaml")],
                  [f"config.{key}={value}" for key, value in own.items()])  # fmt: skip
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and "bridge.yaml" in d["data"]]
    got = yaml.safe_load(cm["data"]["bridge.yaml"])
    if got["source"]["tmc"]["tls_ca_file"] != own["source.tmc.tls_ca_file"]:
        raise Failed(f"tls.tmcCa replaced the config's tls_ca_file: {got['source']['tmc']}")
    if got["sink"]["kafka"]["extra"]["ssl.ca.location"] != "/etc/ssl/certs/ca-certificates.crt":
        raise Failed(f"tls.kafkaCa replaced the config's ssl.ca.location: {got['sink']}")
    print("chart: certificate paths set in config win over tls.*")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm")
    parser.add_argument("--kubernetes-validate")
    parser.add_argument(
        "--write-schema", action="store_true",
        help="rewrite the config part of values.schema.json from the bridge's models",
    )  # fmt: skip
    args = parser.parse_args()
    if args.write_schema:
        write_schema()
        print(f"chart: wrote the config part of {SCHEMA.relative_to(ROOT)}")
        return 0
    if not (args.helm and args.kubernetes_validate):
        parser.error("--helm and --kubernetes-validate are required")
    try:
        check_schema()
        files = sorted((CHART / "ci").glob("*.yaml"))
        if not files:
            raise Failed("no values files in helm/tmc-bridge/ci")
        for values in files:
            run([args.helm, "lint", str(CHART), "--strict", "--kube-version", KUBE,
                 "-f", str(values)])  # fmt: skip
            docs = render(args.helm, [str(values)])
            validate(args.kubernetes_validate, docs, values.name)
            summary = check_manifests(docs, values.name)
            print(f"chart: {values.name}: lint, template, validate, load ok ({summary})")
        check_readme_install(args.helm, args.kubernetes_validate)
        check_numbers(args.helm)
        check_tls_user_paths(args.helm)
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
        rocketmq = str(CHART / "ci" / "rocketmq-values.yaml")
        tls = str(CHART / "ci" / "tls-values.yaml")
        refused = [
            ("transactional RocketMQ without persistence", rocketmq,
             ["persistence.enabled=false"], "config.sink.rocketmq.mode is transactional"),
            ("a secret in the config", kafka, ["config.source.tmc.app_secret=x"], "app_secret"),
            ("a typo in a source key", kafka, ["config.source.tmc.app_kye=1"], "app_kye"),
            ("a wrong type", kafka, ["config.source.tmc.connections=two"], "connections"),
            ("a URL of the wrong scheme", kafka,
             ["config.source.tmc.url=http://mc.api.taobao.com/"], "/config/source/tmc/url"),
            ("a group name the platform refuses", kafka,
             ["config.source.tmc.group=default_orders"], "/config/source/tmc/group"),
            ("routing topics as a map (Helm sorts it)", kafka,
             ["config.routing.topics.x=y"], "/config/routing/topics"),
            ("a password in sink.kafka.extra", kafka,
             ["config.sink.kafka.extra.ssl\\.key\\.password=x"], "stored in the ConfigMap"),
            ("ServiceMonitor and PodMonitor", kafka, ["metrics.podMonitor.enabled=true"],
             "not both"),
            ("an image digest that is not one", kafka, ["image.digest=latest"], "digest"),
            ("Kafka certificates without TLS", tls,
             ["config.sink.kafka.extra.security\\.protocol=SASL_PLAINTEXT"],
             "security.protocol to SSL or SASL_SSL"),
            ("an encrypted client key without its password", tls,
             ["secret.kafkaSslKeyPassword="], "set secret.kafkaSslKeyPassword"),
            ("encryptedKey without a client certificate", kafka,
             ["tls.kafkaClientCert.encryptedKey=true"], "needs tls.kafkaClientCert.secretName"),
            ("tls.tmcCa with the ONS source", ons, ["tls.tmcCa.secretName=ca"], "not ons"),
            ("tls.kafkaCa with the RocketMQ sink", rocketmq, ["tls.kafkaCa.secretName=ca"],
             "not rocketmq"),
            ("a typo in tls", tls, ["tls.kafkaCA.secretName=ca"], "kafkaCA"),
            ("an extra CA bundle on a chart folder", tls,
             ["extraCaBundles[0].mountPath=/etc/tmc-bridge/tls/kafka"], "is taken"),
            ("an extra CA bundle at a relative path", tls,
             ["extraCaBundles[0].mountPath=certs"], "mountPath"),
        ]  # fmt: skip
        for what, values_file, sets, expect in refused:
            must_fail(args.helm, what, [values_file], sets, expect)
    except Failed as exc:
        print(f"chart: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
