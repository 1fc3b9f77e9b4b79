-- Argo CD health check for ftops.dev/FineTune (the read-only mirror of a spec in git).
-- Stalled=True (an error retrying will not fix) -> Degraded; Ready=True -> Healthy; a step that
-- failed for good (gate failed, training failed, data rejected) -> Degraded; anything still on
-- its way, or a status older than the object's generation -> Progressing.
local hs = { status = "Progressing", message = "Waiting for the ftops controller" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.metadata ~= nil and obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "Waiting for the controller to observe generation " .. obj.metadata.generation
  return hs
end
local failed = {
  GateFailed = true, TrainingFailed = true, EvaluationFailed = true, ReviewRejected = true,
  DataInvalid = true, SpecInvalid = true, TooFewExamples = true, RolledBack = true,
}
local ready = nil
local failure = nil
local progress = nil
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Stalled" and c.status == "True" then
    hs.status = "Degraded"
    hs.message = c.reason .. ": " .. (c.message or "")
    return hs
  end
  if c.type == "Ready" then
    ready = c
  elseif c.status == "False" and failed[c.reason] and failure == nil then
    failure = c
  elseif c.status ~= "True" and progress == nil then
    progress = c
  end
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end
if failure ~= nil then
  hs.status = "Degraded"
  hs.message = failure.type .. " " .. failure.reason .. ": " .. (failure.message or "")
  return hs
end
if progress ~= nil then
  hs.message = progress.type .. " " .. progress.reason .. ": " .. (progress.message or "")
elseif ready ~= nil then
  hs.message = ready.reason .. ": " .. (ready.message or "")
end
return hs
