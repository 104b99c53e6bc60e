"""The Lua every atomic namespace write starts with, shared by the prompt and reference stores.

KEYS[1] is always the namespace's meta key and P its key prefix; `bump` is the one place a
namespace version is incremented and its change event published, so exemplar and reference writes
share one version sequence and one event channel.
"""

LUA_PRELUDE = r"""
local meta_key = KEYS[1]
local P = string.sub(meta_key, 1, -5)

local function bump(event)
  local v = redis.call('INCR', P .. 'version')
  event['version'] = v
  redis.call('PUBLISH', P .. 'events', cjson.encode(event))
  return v
end

local function current_version()
  return tonumber(redis.call('GET', P .. 'version') or '0')
end
"""
