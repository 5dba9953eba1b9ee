-- wrk script for `POST /v1/identify` (used by benches/http.rs).
--
-- PALMGATE_API_KEYS: comma-separated API keys; wrk thread i sends key i (round robin). One
-- key per thread keeps the request static (built once per thread), so wrk spends the same CPU
-- on every server it measures.

local keys = {}
for k in string.gmatch(os.getenv("PALMGATE_API_KEYS") or "", "[^,]+") do
  table.insert(keys, k)
end

local threads = 0

function setup(thread)
  threads = threads + 1
  if #keys > 0 then
    thread:set("api_key", keys[((threads - 1) % #keys) + 1])
  end
end

function init(args)
  wrk.method = "POST"
  wrk.body = nil
  wrk.headers["Content-Length"] = "0"
  if api_key then
    wrk.headers["X-API-Key"] = api_key
  end
end
