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
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tmc-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
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

{{- define "tmc-bridge.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
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
{{- $prefix := default .Release.Namespace $v.instanceIdPrefix -}}
{{- $source := default dict $cfg.source -}}
{{- $sourceType := default "tmc" $source.type -}}
{{- $src := default dict (get $source $sourceType) -}}
{{- if eq $sourceType "tmc" -}}
{{- if not $src.app_key }}{{ fail "config.source.tmc.app_key is required" }}{{ end -}}
{{- if and (not $v.secret.existingSecret) (not $v.secret.tmcAppSecret) -}}
{{- fail "set secret.tmcAppSecret, or secret.existingSecret with a tmc-app-secret key" -}}
{{- end -}}
{{- $_ := set $src "app_secret_file" (printf "%s/tmc-app-secret" $secrets) -}}
{{- else if eq $sourceType "ons" -}}
{{- if $src.access_key -}}
{{- if and (not $v.secret.existingSecret) (not $v.secret.onsSecretKey) -}}
{{- fail "config.source.ons.access_key is set: set secret.onsSecretKey, or secret.existingSecret with an ons-secret-key key" -}}
{{- end -}}
{{- $_ := set $src "secret_key_file" (printf "%s/ons-secret-key" $secrets) -}}
{{- end -}}
{{- else -}}
{{- fail (printf "config.source.type must be tmc or ons, not %q" $sourceType) -}}
{{- end -}}
{{- $sink := default dict $cfg.sink -}}
{{- $sinkType := default "kafka" $sink.type -}}
{{- $snk := default dict (get $sink $sinkType) -}}
{{- $id := printf "%s-${POD_NAME}" $prefix -}}
{{- if eq $sinkType "kafka" -}}
{{- if not $snk.bootstrap_servers }}{{ fail "config.sink.kafka.bootstrap_servers is required" }}{{ end -}}
{{- $_ := set $snk "transactional_id" $id -}}
{{- if $v.kafkaSasl.enabled -}}
{{- if and (not $v.secret.existingSecret) (not $v.secret.kafkaSaslPassword) -}}
{{- fail "kafkaSasl.enabled: set secret.kafkaSaslPassword, or secret.existingSecret with a kafka-sasl-password key" -}}
{{- end -}}
{{- $extra := default dict $snk.extra -}}
{{- $_ := set $extra "sasl.password" "${KAFKA_SASL_PASSWORD}" -}}
{{- $_ := set $snk "extra" $extra -}}
{{- end -}}
{{- else if eq $sinkType "rocketmq" -}}
{{- $_ := set $snk "producer_group" $id -}}
{{- $_ := set $snk "journal_dir" "/var/lib/tmc-bridge/journal" -}}
{{- if $snk.access_key -}}
{{- if and (not $v.secret.existingSecret) (not $v.secret.rocketmqSecretKey) -}}
{{- fail "config.sink.rocketmq.access_key is set: set secret.rocketmqSecretKey, or secret.existingSecret with a rocketmq-secret-key key" -}}
{{- end -}}
{{- $_ := set $snk "secret_key_file" (printf "%s/rocketmq-secret-key" $secrets) -}}
{{- end -}}
{{- else -}}
{{- fail (printf "config.sink.type must be kafka or rocketmq, not %q" $sinkType) -}}
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
