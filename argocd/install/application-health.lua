-- Argo CD health of an Application, for the app-of-apps (argocd/platform): Argo CD gives child
-- Applications no health of their own, so sync waves would not wait for one to be ready before
-- the next starts. A child is Healthy only when it is Healthy and Synced (since Argo CD 3.4 an
-- application whose sync failed can still report Healthy); until then Progressing, or Degraded
-- when it is.
local hs = {status = "Progressing", message = "waiting for the application to sync and be healthy"}
if obj.status == nil or obj.status.health == nil or obj.status.health.status == nil then
  return hs
end
local health = obj.status.health.status
local synced = obj.status.sync ~= nil and obj.status.sync.status == "Synced"
if health == "Healthy" and not synced then
  hs.message = "healthy but not synced yet"
  return hs
end
hs.status = health
hs.message = obj.status.health.message or ""
return hs
