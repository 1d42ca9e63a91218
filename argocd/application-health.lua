-- Argo CD health of an Application, for the app-of-apps (argocd/platform): Argo CD gives child
-- Applications no health of their own, so sync waves would not wait for one to be ready before
-- the next starts. This reports the child's own health (Progressing until it has one).
local hs = {status = "Progressing", message = "waiting for the application's health"}
if obj.status ~= nil and obj.status.health ~= nil and obj.status.health.status ~= nil then
  hs.status = obj.status.health.status
  hs.message = obj.status.health.message or ""
end
return hs
