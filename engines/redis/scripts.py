"""The Lua scripts: each check and the write it guards run as one atomic step inside Redis.

Lua does not roll back, so every script checks first and writes last. Scripts touch keys
outside `KEYS` only where a count has to be repaired (a crashed relay's stream), which
is why the engine wants one Redis (or a primary with replicas), not a Cluster.
"""

# A per-stream entry id is 0-(seq+1): its second part is the next seq to write.
_TOP = """
local function next_seq(log)
  local top = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
  if top[1] then return tonumber(string.match(top[1][1], '%-(%d+)$')) end
  return 0
end
"""

# KEYS meta, log, my streams set. ARGV replica, owner, upstream, combo, start event, live ttl ms, stream id.
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'replica', ARGV[1], 'owner', ARGV[2], 'upstream', ARGV[3], 'combo', ARGV[4])
redis.call('XADD', KEYS[2], '0-1', 'e', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('SADD', KEYS[3], ARGV[7])
return 1
"""

# KEYS meta, log, readers. ARGV replica, live ttl ms, end ttl ms, maxlen, terminal (1/0), then id, event pairs.
# The fence: only the replica named in meta writes, never after a terminal event (whoever
# wrote it), and never the same seq twice (explicit ids; a retried write skips what landed).
APPEND = _TOP + """
local m = redis.call('HMGET', KEYS[1], 'replica', 'ended', 'cancel')
if not m[1] then return 'gone' end
if m[2] then return 'ended' end
if m[1] ~= ARGV[1] then return 'fenced' end
local after = next_seq(KEYS[2])
-- Events this writer sent before are missing (a failover lost them): never write around a hole.
if tonumber(string.match(ARGV[6], '%-(%d+)$')) - 1 > after then return 'gone' end
for i = 6, #ARGV, 2 do
  if tonumber(string.match(ARGV[i], '%-(%d+)$')) > after then
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], ARGV[i], 'e', ARGV[i + 1])
  end
end
local ttl = ARGV[2]
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'ended', '1')
  ttl = ARGV[3]
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
if m[3] then return 'cancel' end
return 'ok'
"""

# KEYS meta, log. ARGV the dead replica, stream id, end ttl ms, message.
# Returns the stream's owner (to release its limit) when this call wrote the terminal event.
LOST = _TOP + """
local m = redis.call('HMGET', KEYS[1], 'replica', 'ended', 'owner')
if m[1] ~= ARGV[1] or m[2] then return false end
local seq = next_seq(KEYS[2])
local event = cjson.encode({type = 'error', stream_id = ARGV[2], seq = seq, code = 'relay_lost',
                            message = ARGV[4], retryable = true})
redis.call('XADD', KEYS[2], '0-' .. (seq + 1), 'e', event)
redis.call('HSET', KEYS[1], 'ended', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return m[3]
"""

# KEYS replicas. ARGV me, lease ms. Renews my lease on Redis's clock; returns the replicas whose lease ran out.
LEASE = """
if redis.replicate_commands then redis.replicate_commands() end  -- Redis 6.2: TIME before writes
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
"""

# KEYS readers, replicas. ARGV me. Readers on live replicas other than me.
READERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local total, all = 0, redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local deadline = redis.call('ZSCORE', KEYS[2], all[i])
  if all[i] ~= ARGV[1] and deadline and tonumber(deadline) > now then total = total + tonumber(all[i + 1]) end
end
return total
"""

# KEYS live set, bucket. ARGV stream id, max live, burst, starts per second, meta key prefix, meta key suffix.
# Returns {0, live} when admitted, {1, live} over max_streams_per_client, {2, wait s} when rate limited.
ADMIT = """
if redis.replicate_commands then redis.replicate_commands() end
local live = redis.call('SCARD', KEYS[1])
if live >= tonumber(ARGV[2]) then
  -- A member whose stream has ended or expired no longer counts (its relay died before releasing it).
  for _, sid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    local m = redis.call('HMGET', ARGV[5] .. sid .. ARGV[6], 'replica', 'ended')
    if not m[1] or m[2] then redis.call('SREM', KEYS[1], sid) end
  end
  live = redis.call('SCARD', KEYS[1])
  if live >= tonumber(ARGV[2]) then return {1, live} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local burst, rate = tonumber(ARGV[3]), tonumber(ARGV[4])
local b = redis.call('HMGET', KEYS[2], 'tokens', 'at')
local tokens = math.min(burst, (tonumber(b[1]) or burst) + (now - (tonumber(b[2]) or now)) * rate)
if tokens < 1 then return {2, tostring((1 - tokens) / rate)} end
redis.call('HSET', KEYS[2], 'tokens', tostring(tokens - 1), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[2], math.ceil(burst / rate * 1000) + 1000)
redis.call('SADD', KEYS[1], ARGV[1])
return {0, live + 1}
"""
