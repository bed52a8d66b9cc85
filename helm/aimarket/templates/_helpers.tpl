{{/* Names */}}
{{- define "aimarket.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aimarket.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "aimarket.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "aimarket.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: include "aimarket.selector" (list . "gateway") */}}
{{- define "aimarket.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "aimarket.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "aimarket.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "aimarket.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aimarket.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "aimarket.rayAddress" -}}
{{ include "aimarket.fullname" . }}-ray-head-svc.{{ .Release.Namespace }}.svc:6379
{{- end }}

{{/* The pod-level security context of the app's pods */}}
{{- define "aimarket.podSecurityContext" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{- define "aimarket.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end }}

{{/* The app's secret env (names of Settings fields, values from Secrets) */}}
{{- define "aimarket.secretEnv" -}}
- name: AIMARKET_SECRET_KEY
  valueFrom:
    secretKeyRef: {name: {{ .Values.secrets.existingSecret }}, key: secret-key}
- name: AIMARKET_DATABASE_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.database.existingSecret | default .Values.secrets.existingSecret }}, key: {{ .Values.database.key }}}
{{- if not .Values.redis.enabled }}
- name: AIMARKET_REDIS_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.redis.external.existingSecret | default .Values.secrets.existingSecret }}, key: {{ .Values.redis.external.key }}}
{{- end }}
- name: AIMARKET_STRIPE_API_KEY
  valueFrom:
    secretKeyRef: {name: {{ .Values.secrets.existingSecret }}, key: stripe-api-key, optional: true}
- name: AIMARKET_STRIPE_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef: {name: {{ .Values.secrets.existingSecret }}, key: stripe-webhook-secret, optional: true}
- name: AIMARKET_ADMIN_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ .Values.secrets.existingSecret }}, key: admin-password, optional: true}
- name: AIMARKET_METRICS_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ .Values.secrets.existingSecret }}, key: metrics-token, optional: true}
{{- end }}

{{/* An app container's env: the Settings ConfigMap, then the secrets */}}
{{- define "aimarket.appEnv" -}}
envFrom:
  - configMapRef:
      name: {{ include "aimarket.fullname" . }}-settings
env:
  {{- include "aimarket.secretEnv" . | nindent 2 }}
{{- end }}

{{/* Exec probe: the configured Redis answers (flusher, billing sender) */}}
{{- define "aimarket.redisProbe" -}}
exec:
  command:
    - python
    - -c
    - "import os, redis; redis.Redis.from_url(os.environ['AIMARKET_REDIS_URL'], socket_timeout=3, socket_connect_timeout=3).ping()"
periodSeconds: 30
timeoutSeconds: 10
failureThreshold: 3
{{- end }}

{{/* Exec probe of a Ray node: its raylet (and on the head the GCS) through the dashboard agent */}}
{{- define "aimarket.rayProbe" -}}
{{- $urls := list "http://127.0.0.1:52365/api/local_raylet_healthz" -}}
{{- if .head }}{{ $urls = append $urls "http://127.0.0.1:8265/api/gcs_healthz" }}{{ end -}}
exec:
  command:
    - python
    - -c
    - {{ printf "import urllib.request as u; [u.urlopen(x, timeout=5).read() for x in %s]" ($urls | toJson) | quote }}
initialDelaySeconds: 10
periodSeconds: 10
timeoutSeconds: 10
failureThreshold: {{ .failureThreshold }}
{{- end }}
