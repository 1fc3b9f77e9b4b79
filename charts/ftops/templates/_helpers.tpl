{{/* Names and labels shared by every template. */}}
{{- define "ftops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ftops.fullname" -}}
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

{{- define "ftops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ftops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "ftops.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ftops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ftops
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ftops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ftops.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ftops.leaseName" -}}
{{- default (include "ftops.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{/* repository[:tag][@digest]; the digest pins the image when given. */}}
{{- define "ftops.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s:%s@%s" .image.repository $tag .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "ftops.claimName" -}}
{{- if .pvc.existingClaim -}}{{ .pvc.existingClaim }}{{- else -}}{{ include "ftops.fullname" .root }}-{{ .suffix }}{{- end -}}
{{- end -}}

{{/* The operator config the controller loads (--operator-config): the values' operatorConfig,
     with cluster.image from trainerImage, cluster.artifactStore from artifactStore (the tenant
     pods' credentials as Secret references) and cluster.modelCache from modelCache. */}}
{{- define "ftops.operatorConfig" -}}
{{- $op := deepCopy (default dict .Values.operatorConfig) -}}
{{- $cluster := deepCopy (default dict (get $op "cluster")) -}}
{{- if not (hasKey $cluster "image") -}}
{{- $_ := set $cluster "image" (include "ftops.image" (dict "root" . "image" .Values.trainerImage)) -}}
{{- end -}}
{{- if and (not (hasKey $cluster "artifactStore")) .Values.artifactStore.uri -}}
{{- $store := dict "uri" .Values.artifactStore.uri "endpointUrl" .Values.artifactStore.endpointUrl "region" .Values.artifactStore.region -}}
{{- $creds := list -}}
{{- if .Values.artifactStore.tenantSecretName -}}
{{- range .Values.artifactStore.credentials.env -}}
{{- $creds = append $creds (dict "env" .name "secret" $.Values.artifactStore.tenantSecretName "key" .key) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $store "credentials" $creds -}}
{{- $_ := set $cluster "artifactStore" $store -}}
{{- end -}}
{{- if not (hasKey $cluster "modelCache") -}}
{{- $mc := dict "claim" .Values.modelCache.claim "storage" .Values.modelCache.size "storageClass" .Values.modelCache.storageClass -}}
{{- if .Values.modelCache.hfTokenSecretName -}}
{{- $_ := set $mc "hfToken" (dict "env" "HF_TOKEN" "secret" .Values.modelCache.hfTokenSecretName "key" "token") -}}
{{- end -}}
{{- $_ := set $cluster "modelCache" $mc -}}
{{- end -}}
{{- if and (not (hasKey $cluster "trainingRuntime")) .Values.trainingRuntime.name -}}
{{- $_ := set $cluster "trainingRuntime" .Values.trainingRuntime.name -}}
{{- end -}}
{{- $_ := set $op "cluster" $cluster -}}
{{- toYaml $op -}}
{{- end -}}

{{/* Refuse configurations that would let two controllers act at once. */}}
{{- define "ftops.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) -}}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without it every replica would submit Jobs and write the ledger" -}}
{{- end -}}
{{- if .Values.leaderElection.enabled -}}
{{- $le := .Values.leaderElection -}}
{{- if not (and (lt (float64 $le.retryPeriod) (float64 $le.renewDeadline)) (lt (float64 $le.renewDeadline) (float64 $le.leaseDuration))) -}}
{{- fail "leaderElection needs retryPeriod < renewDeadline < leaseDuration, so a leader stops writing before a follower may take over" -}}
{{- end -}}
{{- end -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- range $key := list "ledger" "checkpoints" -}}
{{- $pvc := index $.Values.persistence $key -}}
{{- if and $pvc.enabled (not $pvc.existingClaim) (not (has "ReadWriteMany" $pvc.accessModes)) -}}
{{- fail (printf "persistence.%s.accessModes must include ReadWriteMany with replicaCount > 1: the standby pod mounts it too (possibly on another node)" $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
