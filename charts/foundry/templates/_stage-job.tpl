{{/*
One stage Job, rendered per stage into the plan (never applied by Helm: the driver creates
it once the stage's inputs are committed). The spec travels in the pod's own annotation and
reaches the container as a file through the downward API, so a Job needs no other object and
stays exactly what was planned however often the recipe is re-submitted.

Arguments: dict "root" $ "recipe" NAME "stage" <plan stage> "specJson" JSON.
A plan stage is {stage, key, needs, gate, spec, resources}; resources is the recipe's
resources.<stage> in the pools' short form, gate the rules the driver judges on the
evaluations among needs before it creates the Job.
*/}}
{{- define "foundry.stagePool" -}}
{{- $v := .root.Values -}}
{{- $want := .stage.resources | default dict -}}
{{- $pool := index $v.stages .stage.stage -}}
{{- if hasKey $want "gpu" -}}
{{- $pool = ternary "gpu" "cpu" (gt (int $want.gpu) 0) -}}
{{- end -}}
{{- if and (eq $pool "gpu") (not $v.pools.gpu.enabled) -}}
{{- if hasKey $want "gpu" -}}
{{- fail (printf "recipe %s: resources.%s.gpu is %d but pools.gpu.enabled is false; enable the gpu pool or remove the GPU request" .recipe .stage.stage (int $want.gpu)) -}}
{{- end -}}
{{- $pool = "cpu" -}}
{{- end -}}
{{- $pool -}}
{{- end -}}

{{- define "foundry.stageJob" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $poolName := include "foundry.stagePool" . -}}
{{- $pool := index $v.pools $poolName -}}
{{- $resources := merge (dict) (.stage.resources | default dict) $pool.resources -}}
{{- if eq $poolName "cpu" }}{{ $_ := unset $resources "gpu" }}{{ end -}}
apiVersion: batch/v1
kind: Job
metadata:
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "foundry.labels" (dict "root" $root "component" "stage") | nindent 4 }}
    {{- include "foundry.stageLabels" . | nindent 4 }}
    {{- with $pool.queueName }}
    kueue.x-k8s.io/queue-name: {{ . }}
    {{- end }}
spec:
  backoffLimit: {{ int $pool.backoffLimit }}
  activeDeadlineSeconds: {{ int $pool.activeDeadlineSeconds }}
  ttlSecondsAfterFinished: {{ int $v.stageJob.ttlSecondsAfterFinished }}
  podFailurePolicy:
    {{- include "foundry.podFailurePolicy" "stage" | nindent 4 }}
  template:
    metadata:
      labels:
        {{- include "foundry.podLabels" (dict "root" $root "component" "stage") | nindent 8 }}
        {{- include "foundry.stageLabels" . | nindent 8 }}
      annotations:
        foundry.dev/spec: {{ .specJson | quote }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      enableServiceLinks: false
      {{- with $v.stageJob.serviceAccountName }}
      serviceAccountName: {{ . }}
      {{- end }}
      {{- with $pool.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $pool.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $pool.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $pool.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "foundry.podSecurityContext" $root | nindent 8 }}
      containers:
        - name: stage
          image: {{ include "foundry.image" (dict "root" $root "image" $pool.image) }}
          imagePullPolicy: {{ $pool.image.pullPolicy }}
          command: [foundry-stage]
          args: [/etc/foundry/spec/spec.json]
          env:
            - name: HOME
              value: /scratch
            - name: TMPDIR
              value: /scratch
            - name: FOUNDRY_SCRATCH
              value: /scratch
            - name: XDG_CACHE_HOME
              value: /cache/xdg
            - name: HF_HOME
              value: /cache/huggingface
            - name: FOUNDRY_CACHE
              value: /cache/foundry
            {{- include "foundry.storeEnv" $root | nindent 12 }}
            {{- with $v.huggingface.tokenSecret.name }}
            - name: HF_TOKEN
              valueFrom:
                secretKeyRef:
                  name: {{ . }}
                  key: {{ $v.huggingface.tokenSecret.key }}
            {{- end }}
          resources:
            {{- include "foundry.resources" (dict "resources" $resources "gpuResource" (ternary $pool.gpuResource "" (eq $poolName "gpu"))) | nindent 12 }}
          securityContext:
            {{- include "foundry.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - name: spec
              mountPath: /etc/foundry/spec
              readOnly: true
            - name: scratch
              mountPath: /scratch
            - name: cache
              mountPath: /cache
            - name: tmp
              mountPath: /tmp
            {{- if $pool.shmSize }}
            - name: shm
              mountPath: /dev/shm
            {{- end }}
      volumes:
        - name: spec
          downwardAPI:
            items:
              - path: spec.json
                fieldRef:
                  fieldPath: metadata.annotations['foundry.dev/spec']
        - name: scratch
          emptyDir:
            sizeLimit: {{ $resources.ephemeralStorage | toString | quote }}
        - name: cache
          emptyDir:
            sizeLimit: {{ $pool.cacheSize | toString | quote }}
        - name: tmp
          emptyDir:
            sizeLimit: {{ $pool.tmpSize | toString | quote }}
        {{- with $pool.shmSize }}
        - name: shm
          emptyDir:
            medium: Memory
            sizeLimit: {{ . | toString | quote }}
        {{- end }}
{{- end -}}

{{- define "foundry.stageLabels" -}}
foundry.dev/recipe: {{ include "foundry.labelValue" .recipe }}
foundry.dev/stage: {{ .stage.stage }}
foundry.dev/key: {{ .stage.key }}
{{- end -}}

{{/*
A plan as the driver reads it (plan.json): each stage with its spec (the store filled in) and
its full Job. A stage Job's name is fdy-<recipe>-<key>-<digest of the Job's spec>: the key
names the work, the digest the way it runs (image, pool, resources), so a changed recipe or
changed values give a new Job instead of an edit of an immutable one. At most 61 characters.
Arguments: dict "root" $ "plan" <plan as passed by foundry render>.
*/}}
{{- define "foundry.planDocument" -}}
{{- $root := .root -}}
{{- $plan := .plan -}}
{{- $store := $root.Values.store.url -}}
{{- $stages := list -}}
{{- range $plan.stages -}}
{{- $spec := deepCopy .spec -}}
{{- $_ := set $spec "store" $store -}}
{{- $job := include "foundry.stageJob" (dict "root" $root "recipe" $plan.recipe "stage" . "specJson" (toJson $spec)) | fromYaml -}}
{{- if hasKey $job "Error" }}{{ fail (printf "stage Job of %s did not render as YAML: %s" .key $job.Error) }}{{ end -}}
{{- $digest := toJson $job.spec | sha256sum | trunc 6 -}}
{{- $_ := set $job.metadata "name" (printf "fdy-%s-%s-%s" (include "foundry.dns" (dict "text" $plan.recipe "max" 28)) .key $digest) -}}
{{- $stages = append $stages (dict "stage" .stage "key" .key "needs" .needs "gate" (.gate | default dict) "spec" $spec "job" $job) -}}
{{- end -}}
{{- toJson (dict "recipe" $plan.recipe "recipe_hash" $plan.recipe_hash "store" $store "stages" $stages) -}}
{{- end -}}
