-- Argo CD health of a KServe InferenceService (argocd-cm:
-- resource.customizations.health.serving.kserve.io_InferenceService).
-- Ready -> Healthy; a model that cannot load or a revision that failed -> Degraded (not
-- Progressing forever); anything else while it rolls out -> Progressing.
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the InferenceService to report status"
  return hs
end
if obj.status.modelStatus ~= nil then
  local transition = obj.status.modelStatus.transitionStatus
  if transition == "BlockedByFailedLoad" or transition == "InvalidSpec" then
    hs.status = "Degraded"
    local info = obj.status.modelStatus.lastFailureInfo
    if info ~= nil and info.message ~= nil then
      hs.message = info.message
    else
      hs.message = "Model " .. transition
    end
    return hs
  end
end
local failed = {RevisionFailed = true, RevisionMissing = true, ContainerMissing = true,
                ExitCode = true, ProgressDeadlineExceeded = true}
for _, condition in ipairs(obj.status.conditions) do
  if condition.status == "False" and condition.reason ~= nil and failed[condition.reason] then
    hs.status = "Degraded"
    hs.message = condition.type .. ": " .. (condition.message or condition.reason)
    return hs
  end
end
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" and condition.status == "True" then
    hs.status = "Healthy"
    hs.message = "InferenceService is ready"
    return hs
  end
end
hs.status = "Progressing"
hs.message = "Waiting for the InferenceService to become ready"
return hs
