{{/* Names and labels. */}}
{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "herald.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "herald.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway"). */}}
{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "herald.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "herald.authSecretName" -}}
{{- default (printf "%s-auth" (include "herald.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "herald.redisSecretName" -}}
{{- default (printf "%s-redis" (include "herald.fullname" .)) .Values.redis.existingSecret -}}
{{- end -}}

{{/* The pod's grace period: above the preStop sleep plus the drain. */}}
{{- define "herald.gracePeriod" -}}
{{- $floor := add .Values.gateway.preStopSleepSeconds .Values.drainTimeoutSeconds -}}
{{- with .Values.gateway.terminationGracePeriodSeconds -}}
{{- if le (int .) (int $floor) -}}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) must be above preStopSleepSeconds + drainTimeoutSeconds (%d), or the kubelet kills nodes mid-drain" (int .) (int $floor)) -}}
{{- end -}}
{{- int . -}}
{{- else -}}
{{- add $floor 15 -}}
{{- end -}}
{{- end -}}

{{/*
herald.toml: the free-form `config` map plus the keys the chart owns.
Helm reads every number in values as a float, and herald.toml wants whole
numbers for counts, so this renders TOML itself instead of using toToml.
*/}}
{{- define "herald.config" -}}
{{- $own := dict "listen" "0.0.0.0:8080" "admin_listen" "0.0.0.0:8081" "drain_timeout" (printf "%ds" (int .Values.drainTimeoutSeconds)) "redis_cluster" .Values.redis.cluster -}}
{{- if .Values.tls.enabled -}}
{{- $_ := set $own "tls" (dict "cert_file" "/etc/herald/tls/tls.crt" "key_file" "/etc/herald/tls/tls.key") -}}
{{- end -}}
{{- $config := mustMergeOverwrite (deepCopy .Values.config) $own -}}
# herald.toml rendered by the Herald chart from its `config` values; secrets
# and node_id come from the environment (HERALD_*). docs/configuration.md
{{ include "herald.toml.table" (dict "prefix" "" "table" $config) }}
{{- end -}}

{{/* One TOML table: its plain keys, then its sub-tables under headers. */}}
{{- define "herald.toml.table" -}}
{{- $table := .table -}}
{{- $prefix := .prefix -}}
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if not (kindIs "map" $value) }}
{{ include "herald.toml.key" $key }} = {{ include "herald.toml.value" $value }}
{{- end }}
{{- end }}
{{- range $key := keys $table | sortAlpha }}
{{- $value := get $table $key }}
{{- if kindIs "map" $value }}
{{- $name := ternary (include "herald.toml.key" $key) (printf "%s.%s" $prefix (include "herald.toml.key" $key)) (eq $prefix "") }}

[{{ $name }}]
{{- include "herald.toml.table" (dict "prefix" $name "table" $value) }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "herald.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{/* A TOML value; maps inside arrays become inline tables. */}}
{{- define "herald.toml.value" -}}
{{- if kindIs "string" . -}}
{{- toJson . -}}
{{- else if kindIs "bool" . -}}
{{- . -}}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) -}}
{{- if eq (float64 .) (floor .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if kindIs "slice" . -}}
[{{ range $i, $item := . }}{{ if $i }}, {{ end }}{{ include "herald.toml.value" $item }}{{ end }}]
{{- else if kindIs "map" . -}}
{{- $map := . -}}
{ {{- range $i, $key := keys $map | sortAlpha }}{{ if $i }},{{ end }} {{ include "herald.toml.key" $key }} = {{ include "herald.toml.value" (get $map $key) }}{{ end }} }
{{- else -}}
{{- fail (printf "config: cannot write %v (%s) in herald.toml" . (kindOf .)) -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by the gateways and herald-admin. */}}
{{- define "herald.env" -}}
- name: HERALD_NODE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: HERALD_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "herald.redisSecretName" . }}
      key: {{ .Values.redis.existingSecretKey }}
- name: HERALD_ADMIN__API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "herald.authSecretName" . }}
      key: {{ .Values.auth.adminKeysKey }}
{{- if .Values.redis.caSecret }}
- name: SSL_CERT_FILE
  value: /etc/herald/redis-ca/{{ .Values.redis.caSecretKey }}
{{- end }}
{{- end -}}

{{/* Volumes shared by the gateways and herald-admin. */}}
{{- define "herald.volumes" -}}
- name: config
  {{- if .Values.configAsSecret }}
  secret:
    secretName: {{ include "herald.fullname" . }}-config
  {{- else }}
  configMap:
    name: {{ include "herald.fullname" . }}-config
  {{- end }}
{{- if .Values.redis.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ .Values.redis.caSecret }}
{{- end }}
{{- end -}}

{{- define "herald.volumeMounts" -}}
- name: config
  mountPath: /etc/herald/herald.toml
  subPath: herald.toml
  readOnly: true
{{- if .Values.redis.caSecret }}
- name: redis-ca
  mountPath: /etc/herald/redis-ca
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod anti-affinity and zone spreading of one component. */}}
{{- define "herald.affinity" -}}
{{- $root := .root -}}
{{- $values := .values -}}
{{- if $values.affinity }}
affinity:
  {{- toYaml $values.affinity | nindent 2 }}
{{- else if eq ($values.antiAffinity | default "none") "hard" }}
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "herald.selectorLabels" (dict "root" $root "component" .component) | nindent 12 }}
{{- else if eq ($values.antiAffinity | default "none") "soft" }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "herald.selectorLabels" (dict "root" $root "component" .component) | nindent 14 }}
{{- end }}
{{- end -}}

{{/*
The values' topologySpreadConstraints of one component; a constraint
without labelSelector selects the component's pods.
*/}}
{{- define "herald.topologySpread" -}}
{{- $selector := include "herald.selectorLabels" (dict "root" .root "component" .component) | fromYaml -}}
{{- $constraints := list -}}
{{- range .values.topologySpreadConstraints -}}
{{- $constraint := deepCopy . -}}
{{- if not (hasKey $constraint "labelSelector") -}}
{{- $_ := set $constraint "labelSelector" (dict "matchLabels" $selector) -}}
{{- end -}}
{{- $constraints = append $constraints $constraint -}}
{{- end -}}
{{- toYaml $constraints -}}
{{- end -}}

{{/* Who may reach the admin port (8081): the release's pods, then the values' peers. */}}
{{- define "herald.adminPeers" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/name: {{ include "herald.name" . }}
      app.kubernetes.io/instance: {{ .Release.Name }}
{{- with .Values.networkPolicy.admin.from }}
{{ toYaml . }}
{{- end }}
{{- end -}}
