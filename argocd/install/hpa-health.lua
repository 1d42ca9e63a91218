-- Argo CD health of a HorizontalPodAutoscaler (autoscaling/v2, the version Argo CD reads):
-- upstream's own rule (gitops-engine pkg/health/health_hpa.go at the pinned Argo CD) with one
-- change. An HPA that cannot fetch its metrics (ScalingActive False with FailedGet*Metric: no
-- metrics API, as on kind without metrics-server, or before the first scrape) keeps its current
-- replicas; upstream calls it Degraded, which fails every sync wave after Knative's and Kourier's
-- HPAs. Here it is Healthy, the reason kept in the message (kube-state-metrics still exports the
-- condition to Prometheus). A target it cannot get or update, a bad selector, or replicas it
-- cannot compute stay Degraded. No string library: Argo CD runs health scripts without it.
local degraded = {
  AbleToScale = {FailedGetScale = true, FailedUpdateScale = true},
  ScalingActive = {FailedComputeMetricsReplicas = true, InvalidSelector = true},
}
local noMetrics = {
  FailedGetResourceMetric = true,
  FailedGetPodsMetric = true,
  FailedGetObjectMetric = true,
  FailedGetExternalMetric = true,
}
local hs = {status = "Progressing", message = "Waiting to Autoscale"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
for _, c in ipairs(obj.status.conditions) do
  local reasons = degraded[c.type]
  if reasons ~= nil and reasons[c.reason] then
    hs.status = "Degraded"
    hs.message = c.message
    return hs
  end
end
for _, c in ipairs(obj.status.conditions) do
  if c.type == "ScalingActive" and noMetrics[c.reason] then
    hs.status = "Healthy"
    hs.message = "metrics unavailable, replicas kept: " .. (c.message or "")
    return hs
  end
end
for _, c in ipairs(obj.status.conditions) do
  if (c.type == "AbleToScale" or c.type == "ScalingLimited") and c.status == "True" then
    hs.status = "Healthy"
    hs.message = c.message
    return hs
  end
end
return hs
