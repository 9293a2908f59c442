{{/*
Names and labels, in the style of prometheus-community's kube-state-metrics chart.
*/}}

{{/* The chart's name. */}}
{{- define "segment-video.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A default fully qualified app name, truncated at 63 characters (some Kubernetes name fields are limited to that).
If the release name contains the chart name, the release name is used as the full name.
*/}}
{{- define "segment-video.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The headless Service's name (its DNS name lists the ready pods). */}}
{{- define "segment-video.headlessName" -}}
{{- printf "%s-headless" (include "segment-video.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/* The namespace of every object. */}}
{{- define "segment-video.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{/* Chart name and version, for the chart label. */}}
{{- define "segment-video.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "segment-video.labels" -}}
helm.sh/chart: {{ include "segment-video.chart" . }}
{{ include "segment-video.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "segment-video.name" . }}
{{- end }}

{{/* Labels that select the server's pods. */}}
{{- define "segment-video.selectorLabels" -}}
app.kubernetes.io/name: {{ include "segment-video.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount's name. */}}
{{- define "segment-video.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "segment-video.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}: the digest wins over the tag. Call with (list IMAGE DEFAULT_TAG). */}}
{{- define "segment-video.imageRef" -}}
{{- $image := index . 0 }}
{{- $defaultTag := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $defaultTag $image.tag) }}
{{- end }}
{{- end }}

{{/* The server's image. */}}
{{- define "segment-video.image" -}}
{{- include "segment-video.imageRef" (list .Values.image .Chart.AppVersion) }}
{{- end }}

{{/* The helm test's image: the server's unless tests.image.repository is set. */}}
{{- define "segment-video.testImage" -}}
{{- if .Values.tests.image.repository }}
{{- include "segment-video.imageRef" (list .Values.tests.image .Chart.AppVersion) }}
{{- else }}
{{- include "segment-video.image" . }}
{{- end }}
{{- end }}

{{/* Seconds a stopping pod gets: the preStop sleep, Triton's exit timeout, and a margin. */}}
{{- define "segment-video.terminationGracePeriodSeconds" -}}
{{- add .Values.server.preStopSleepSeconds .Values.server.exitTimeoutSeconds .Values.server.terminationMarginSeconds }}
{{- end }}

{{/* The environment variable that carries the access key from its Secret. */}}
{{- define "segment-video.accessKeyEnv" -}}
TRITON_ACCESS_KEY
{{- end }}

{{/* Where the server.access.tls Secret (tls.crt, tls.key, ca.crt) is mounted. */}}
{{- define "segment-video.tlsDir" -}}
/etc/segment-video/tls
{{- end }}

{{/* Triton's restricted protocol groups but health (repo/access.py: health stays open for the probes). */}}
{{- define "segment-video.restrictedProtocols" -}}
metadata,inference,shared-memory,model-config,model-repository,statistics,trace,logging
{{- end }}

{{/* tritonserver's arguments, one per line (a YAML list). */}}
{{- define "segment-video.serverArgs" -}}
- --model-repository=/models
{{- if .Values.server.access.modelControl }}
- --model-control-mode=explicit
- --load-model=*
{{- else }}
- --model-control-mode=none
{{- end }}
- --exit-timeout-secs={{ .Values.server.exitTimeoutSeconds }}
- --http-port={{ .Values.ports.http }}
- --grpc-port={{ .Values.ports.grpc }}
- --allow-metrics=true
- --metrics-port={{ .Values.ports.metrics }}
{{- range $device := until (int .Values.gpu.count) }}
- --cuda-memory-pool-byte-size={{ $device }}:{{ int64 $.Values.server.cudaMemoryPoolBytes }}
{{- end }}
- --pinned-memory-pool-byte-size={{ int64 .Values.server.pinnedMemoryPoolBytes }}
- --backend-config=python,shm-default-byte-size={{ int64 .Values.server.pythonBackend.shmDefaultBytes }}
- --backend-config=python,shm-growth-byte-size={{ int64 .Values.server.pythonBackend.shmGrowthBytes }}
{{- if .Values.server.logVerbose }}
- --log-verbose={{ .Values.server.logVerbose }}
{{- end }}
{{- $access := .Values.server.access }}
{{- with $access.restrictedKey.secretName }}
{{- $key := printf "%s=$(%s)" $access.restrictedKey.header (include "segment-video.accessKeyEnv" $) }}
- --grpc-restricted-protocol={{ include "segment-video.restrictedProtocols" $ }}:{{ $key }}
- --http-restricted-api={{ include "segment-video.restrictedProtocols" $ }}:{{ $key }}
{{- end }}
{{- if $access.tls.secretName }}
{{- $dir := include "segment-video.tlsDir" . }}
{{- if $access.tls.mutual }}
- --grpc-use-ssl-mutual=true
{{- else }}
- --grpc-use-ssl=true
{{- end }}
- --grpc-server-cert={{ $dir }}/tls.crt
- --grpc-server-key={{ $dir }}/tls.key
{{- if $access.tls.mutual }}
- --grpc-root-cert={{ $dir }}/ca.crt
{{- end }}
{{- end }}
{{- range .Values.server.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}
