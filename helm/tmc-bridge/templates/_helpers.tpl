{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "tmc-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name when it already holds the chart's.
52 characters, not 63: the StatefulSet's pods get a controller-revision-hash label made
of this name plus 11 characters. */}}
{{- define "tmc-bridge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tmc-bridge.labels" -}}
{{ include "tmc-bridge.commonLabels" . }}
{{ include "tmc-bridge.selectorLabels" . }}
{{- end }}

{{/* What every object of the release carries besides the selector labels. */}}
{{- define "tmc-bridge.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tmc-bridge
{{- end }}

{{/* The bridge pods: the standard set plus their component. The selectors stay the two
selector labels (a StatefulSet's selector cannot change on upgrade). */}}
{{- define "tmc-bridge.podLabels" -}}
{{ include "tmc-bridge.labels" . }}
app.kubernetes.io/component: bridge
{{- end }}

{{/* The `helm test` pod: its own component and no app.kubernetes.io/name, so neither the
Service, the PodMonitor nor the PodDisruptionBudget selects it. */}}
{{- define "tmc-bridge.testLabels" -}}
{{ include "tmc-bridge.commonLabels" . }}
{{ include "tmc-bridge.testLabelsSelector" . }}
{{- end }}

{{- define "tmc-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tmc-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tmc-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tmc-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tmc-bridge.secretName" -}}
{{- default (include "tmc-bridge.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{/* repository@digest when image.digest is set (the tag is then ignored), else
repository:tag (tag defaults to the chart's appVersion). */}}
{{- define "tmc-bridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (toString (default .Chart.AppVersion .Values.image.tag)) }}
{{- end }}
{{- end }}

{{/* An id-like value as a string. `--set key=12345678` gives Helm an integer, a values
file a float (1.2345678e+07 through toString); the bridge wants the digits as a string.
The schema lets only strings and whole numbers reach here. */}}
{{- define "tmc-bridge.str" -}}
{{- if kindIs "float64" . }}{{ printf "%.0f" . }}{{ else }}{{ toString . }}{{ end }}
{{- end }}

{{/* (list $dict $keys): the keys of $dict that hold a number, turned into strings. */}}
{{- define "tmc-bridge.stringify" -}}
{{- $d := index . 0 -}}
{{- range $key := index . 1 -}}
{{- $val := get $d $key -}}
{{- if or (kindIs "int64" $val) (kindIs "int" $val) (kindIs "float64" $val) -}}
{{- $_ := set $d $key (include "tmc-bridge.str" $val) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* A list of strings (or numbers), as strings. */}}
{{- define "tmc-bridge.strList" -}}
{{- $out := list -}}
{{- range . }}{{ $out = append $out (include "tmc-bridge.str" .) }}{{ end -}}
{{- toJson $out -}}
{{- end }}

{{/* A routing map in list form ([{pattern: topic}, ...]): the topics as strings. */}}
{{- define "tmc-bridge.stringifyRoutes" -}}
{{- range $item := . -}}
{{- if kindIs "map" $item -}}
{{- range $pattern, $topic := $item -}}
{{- if or (kindIs "int64" $topic) (kindIs "int" $topic) (kindIs "float64" $topic) -}}
{{- $_ := set $item $pattern (include "tmc-bridge.str" $topic) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
The bridge config as the pod reads it: the user's `config` with only the sections of the
chosen source and sink types (so switching type needs no `null`s), plus what the chart
owns: secret file paths, the per-pod transactional id / producer group (`${POD_NAME}` is
filled in by the bridge from the pod's environment), the journal folder and the HTTP port.
*/}}
{{- define "tmc-bridge.config" -}}
{{- $v := .Values -}}
{{- $cfg := deepCopy $v.config -}}
{{- $secrets := "/etc/tmc-bridge/secrets" -}}
{{- $tlsDir := "/etc/tmc-bridge/tls" -}}
{{- $prefix := include "tmc-bridge.str" (default .Release.Namespace $v.instanceIdPrefix) -}}
{{- $source := default dict $cfg.source -}}
{{- $sourceType := default "tmc" $source.type -}}
{{- $src := default dict (get $source $sourceType) -}}
{{- if or (eq $sourceType "tmc") (eq $sourceType "tmc_http") -}}
{{- if not $src.app_key }}{{ fail (printf "config.source.%s.app_key is required" $sourceType) }}{{ end -}}
{{- if and (not $v.secret.existingSecret) (not $v.secret.tmcAppSecret) -}}
{{- fail "set secret.tmcAppSecret, or secret.existingSecret with a tmc-app-secret key" -}}
{{- end -}}
{{- include "tmc-bridge.stringify" (list $src (list "app_key" "group")) -}}
{{- range $g := default list $src.groups }}{{ include "tmc-bridge.stringify" (list $g (list "name")) }}{{ end -}}
{{- $_ := set $src "app_secret_file" (printf "%s/tmc-app-secret" $secrets) -}}
{{- if and $v.tls.tmcCa.secretName (not $src.tls_ca_file) -}}
{{- $_ := set $src "tls_ca_file" (printf "%s/tmc/%s" $tlsDir $v.tls.tmcCa.key) -}}
{{- end -}}
{{- else if eq $sourceType "ons" -}}
{{- if $v.tls.tmcCa.secretName }}{{ fail "tls.tmcCa is for the tmc and tmc_http sources, not ons" }}{{ end -}}
{{- include "tmc-bridge.stringify" (list $src (list "access_key" "group_id" "tag_expression" "channel" "instance_name")) -}}
{{- if $src.topics }}{{ $_ := set $src "topics" (include "tmc-bridge.strList" $src.topics | fromJsonArray) }}{{ end -}}
{{- if $src.access_key -}}
{{- if and (not $v.secret.existingSecret) (not $v.secret.onsSecretKey) -}}
{{- fail "config.source.ons.access_key is set: set secret.onsSecretKey, or secret.existingSecret with an ons-secret-key key" -}}
{{- end -}}
{{- $_ := set $src "secret_key_file" (printf "%s/ons-secret-key" $secrets) -}}
{{- end -}}
{{- else -}}
{{- fail (printf "config.source.type must be tmc, tmc_http or ons, not %q" $sourceType) -}}
{{- end -}}
{{- $sink := default dict $cfg.sink -}}
{{- $sinkType := default "kafka" $sink.type -}}
{{- $snk := default dict (get $sink $sinkType) -}}
{{- $id := printf "%s-${POD_NAME}" $prefix -}}
{{- if eq $sinkType "kafka" -}}
{{- if not $snk.bootstrap_servers }}{{ fail "config.sink.kafka.bootstrap_servers is required" }}{{ end -}}
{{- $_ := set $snk "transactional_id" $id -}}
{{- range $key, $val := default dict $snk.extra -}}
{{- if and (regexMatch "(?i)(password|secret)" $key) (not (regexMatch "^\\$\\{[A-Za-z_][A-Za-z0-9_]*\\}$" (toString $val))) -}}
{{- fail (printf "config.sink.kafka.extra.%s would be stored in the ConfigMap: use kafkaSasl.enabled with secret.kafkaSaslPassword, or a ${VAR} from extraEnv (valueFrom a Secret)" $key) -}}
{{- end -}}
{{- end -}}
{{- if $v.kafkaSasl.enabled -}}
{{- if and (not $v.secret.existingSecret) (not $v.secret.kafkaSaslPassword) -}}
{{- fail "kafkaSasl.enabled: set secret.kafkaSaslPassword, or secret.existingSecret with a kafka-sasl-password key" -}}
{{- end -}}
{{- $extra := default dict $snk.extra -}}
{{- $_ := set $extra "sasl.password" "${KAFKA_SASL_PASSWORD}" -}}
{{- $_ := set $snk "extra" $extra -}}
{{- end -}}
{{- $ca := $v.tls.kafkaCa -}}
{{- $client := $v.tls.kafkaClientCert -}}
{{- if and $client.encryptedKey (not $client.secretName) }}{{ fail "tls.kafkaClientCert.encryptedKey needs tls.kafkaClientCert.secretName" }}{{ end -}}
{{- if or $ca.secretName $client.secretName -}}
{{- $extra := default dict $snk.extra -}}
{{- $protocol := toString (default "" (get $extra "security.protocol")) -}}
{{- if not (or (has (lower $protocol) (list "ssl" "sasl_ssl")) (hasPrefix "${" $protocol)) -}}
{{- fail (printf "tls.kafkaCa / tls.kafkaClientCert: set config.sink.kafka.extra.security.protocol to SSL or SASL_SSL (it is %q: no TLS to Kafka)" $protocol) -}}
{{- end -}}
{{- if and $ca.secretName (not (hasKey $extra "ssl.ca.location")) -}}
{{- $_ := set $extra "ssl.ca.location" (printf "%s/kafka/%s" $tlsDir $ca.key) -}}
{{- end -}}
{{- if $client.secretName -}}
{{- if not (hasKey $extra "ssl.certificate.location") }}{{ $_ := set $extra "ssl.certificate.location" (printf "%s/kafka-client/tls.crt" $tlsDir) }}{{ end -}}
{{- if not (hasKey $extra "ssl.key.location") }}{{ $_ := set $extra "ssl.key.location" (printf "%s/kafka-client/tls.key" $tlsDir) }}{{ end -}}
{{- if $client.encryptedKey -}}
{{- if and (not $v.secret.existingSecret) (not $v.secret.kafkaSslKeyPassword) -}}
{{- fail "tls.kafkaClientCert.encryptedKey: set secret.kafkaSslKeyPassword, or secret.existingSecret with a kafka-ssl-key-password key" -}}
{{- end -}}
{{- $_ := set $extra "ssl.key.password" "${KAFKA_SSL_KEY_PASSWORD}" -}}
{{- end -}}
{{- end -}}
{{- $_ := set $snk "extra" $extra -}}
{{- end -}}
{{- if $snk.dedup }}{{ include "tmc-bridge.stringify" (list $snk.dedup (list "topic")) }}{{ end -}}
{{- else if eq $sinkType "rocketmq" -}}
{{- if or $v.tls.kafkaCa.secretName $v.tls.kafkaClientCert.secretName }}{{ fail "tls.kafkaCa and tls.kafkaClientCert are for the kafka sink, not rocketmq" }}{{ end -}}
{{- include "tmc-bridge.stringify" (list $snk (list "access_key" "channel" "instance_name")) -}}
{{- if and (eq (toString (default "ordered" $snk.mode)) "transactional") (not $v.persistence.enabled) -}}
{{- fail "config.sink.rocketmq.mode is transactional: its journal must survive the pod (it answers the broker's check-backs and remembers what was committed); set persistence.enabled=true (a volume per pod, or persistence.existingClaim)" -}}
{{- end -}}
{{- $_ := set $snk "producer_group" $id -}}
{{- if and $v.persistence.enabled $v.persistence.existingClaim -}}
{{- /* One claim for all pods: a journal folder per pod (the bridge creates it; a subPath
would be created by the kubelet as root). */ -}}
{{- $_ := set $snk "journal_dir" "/var/lib/tmc-bridge/journal/${POD_NAME}" -}}
{{- else -}}
{{- $_ := set $snk "journal_dir" "/var/lib/tmc-bridge/journal" -}}
{{- end -}}
{{- if $snk.access_key -}}
{{- if and (not $v.secret.existingSecret) (not $v.secret.rocketmqSecretKey) -}}
{{- fail "config.sink.rocketmq.access_key is set: set secret.rocketmqSecretKey, or secret.existingSecret with a rocketmq-secret-key key" -}}
{{- end -}}
{{- $_ := set $snk "secret_key_file" (printf "%s/rocketmq-secret-key" $secrets) -}}
{{- end -}}
{{- else -}}
{{- fail (printf "config.sink.type must be kafka or rocketmq, not %q" $sinkType) -}}
{{- end -}}
{{- with $cfg.routing -}}
{{- include "tmc-bridge.stringify" (list . (list "dead_letter_topic")) -}}
{{- include "tmc-bridge.stringifyRoutes" (default list .topics) -}}
{{- range $group, $own := default dict .groups }}{{ if kindIs "map" $own }}{{ include "tmc-bridge.stringifyRoutes" (default list $own.topics) }}{{ end }}{{ end -}}
{{- end -}}
{{- $_ := set $cfg "source" (dict "type" $sourceType $sourceType $src) -}}
{{- $_ := set $cfg "sink" (dict "type" $sinkType $sinkType $snk) -}}
{{- $_ := set $cfg "http" (dict "host" $v.service.listenHost "port" (int $v.service.port)) -}}
{{- $drain := 20.0 -}}
{{- if and $cfg.pipeline $cfg.pipeline.drain_timeout_s }}{{ $drain = $cfg.pipeline.drain_timeout_s }}{{ end -}}
{{- if le (float64 $v.terminationGracePeriodSeconds) (float64 $drain) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be above config.pipeline.drain_timeout_s (%v)" $v.terminationGracePeriodSeconds $drain) -}}
{{- end -}}
{{- toYaml $cfg }}
{{- end }}

{{/* Selects the `helm test` pod (NetworkPolicy). */}}
{{- define "tmc-bridge.testLabelsSelector" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}

{{/* The Secret volumes of tls.* and extraCaBundles, as a JSON list of {name, secretName,
items, mountPath}: the StatefulSet mounts them, tmc-bridge.config points at their files.
Each is a directory mount (not a subPath), so a renewed Secret reaches the pod. */}}
{{- define "tmc-bridge.tlsVolumes" -}}
{{- $v := .Values -}}
{{- $dir := "/etc/tmc-bridge/tls" -}}
{{- $out := list -}}
{{- with $v.tls.tmcCa }}{{ if .secretName -}}
{{- $out = append $out (dict "name" "tls-tmc-ca" "secretName" .secretName "mountPath" (printf "%s/tmc" $dir) "items" (list (dict "key" .key "path" .key))) -}}
{{- end }}{{ end -}}
{{- with $v.tls.kafkaCa }}{{ if .secretName -}}
{{- $out = append $out (dict "name" "tls-kafka-ca" "secretName" .secretName "mountPath" (printf "%s/kafka" $dir) "items" (list (dict "key" .key "path" .key))) -}}
{{- end }}{{ end -}}
{{- with $v.tls.kafkaClientCert }}{{ if .secretName -}}
{{- $out = append $out (dict "name" "tls-kafka-client" "secretName" .secretName "mountPath" (printf "%s/kafka-client" $dir) "items" (list (dict "key" "tls.crt" "path" "tls.crt") (dict "key" "tls.key" "path" "tls.key"))) -}}
{{- end }}{{ end -}}
{{- $taken := list "/etc/tmc-bridge" "/etc/tmc-bridge/bridge.yaml" "/etc/tmc-bridge/secrets" "/home/bridge" "/tmp" "/var/lib/tmc-bridge" -}}
{{- range $out }}{{ $taken = append $taken .mountPath }}{{ end -}}
{{- range $i, $b := $v.extraCaBundles -}}
{{- $path := trimSuffix "/" $b.mountPath -}}
{{- if has $path $taken }}{{ fail (printf "extraCaBundles[%d].mountPath %s is taken: give each bundle its own folder" $i $b.mountPath) }}{{ end -}}
{{- $taken = append $taken $path -}}
{{- $key := default "ca.crt" $b.key -}}
{{- $out = append $out (dict "name" (printf "ca-bundle-%d" $i) "secretName" $b.secretName "mountPath" $path "items" (list (dict "key" $key "path" $key))) -}}
{{- end -}}
{{- toJson $out -}}
{{- end }}
