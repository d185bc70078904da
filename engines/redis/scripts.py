"""The Lua scripts: each check and the write it guards run as one atomic step inside Redis.

Lua does not roll back, so every script checks first and writes last. Scripts touch keys
outside `KEYS` only where a count has to be repaired (a crashed relay's stream), which
is why the engine wants one Redis (or a primary with replicas), not a Cluster.
"""

# A stream's entry ids are 0-(seq+1); its meta's `next` is the seq its writer writes next.

# KEYS meta, log, my streams set. ARGV replica, owner, upstream, combo, start event, live ttl ms, stream id.
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'replica', ARGV[1], 'owner', ARGV[2], 'upstream', ARGV[3], 'combo', ARGV[4], 'next', 1)
redis.call('XADD', KEYS[2], '0-1', 'e', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('SADD', KEYS[3], ARGV[7])
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'conversation', ARGV[8]) end
return 1
"""

# Every stream a flush carries, in one call: KEYS meta, log, readers of each. ARGV replica,
# live ttl ms, end ttl ms, maxlen, then per stream: event count, terminal (1/0), renew ttl
# (1/0), and that many (entry id, event) pairs. Returns a status per stream.
# The fence: only the replica named in meta writes, never after a terminal event (whoever
# wrote it), never the same seq twice (explicit ids; a retried write skips what landed),
# and never around a hole (events it wrote before are gone: a failover lost them).
APPEND = """
local replica, live_ttl, end_ttl, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local out, a = {}, 5
for k = 1, #KEYS, 3 do
  local meta, log = KEYS[k], KEYS[k + 1]
  local n, terminal, renew = tonumber(ARGV[a]), ARGV[a + 1], ARGV[a + 2]
  local first = a + 3
  a = first + 2 * n
  local m = redis.call('HMGET', meta, 'replica', 'ended', 'cancel', 'next')
  local status = 'ok'
  if not m[1] then status = 'gone'
  elseif m[2] then status = 'ended'
  elseif m[1] ~= replica then status = 'fenced'
  elseif tonumber(string.sub(ARGV[first], 3)) - 1 > tonumber(m[4]) then status = 'gone'
  else
    local after = tonumber(m[4])
    for i = first, a - 1, 2 do
      if tonumber(string.sub(ARGV[i], 3)) - 1 >= after then
        redis.call('XADD', log, 'MAXLEN', maxlen, ARGV[i], 'e', ARGV[i + 1])
      end
    end
    local ttl = nil
    if terminal == '1' then
      redis.call('HSET', meta, 'next', string.sub(ARGV[a - 2], 3), 'ended', '1')
      ttl = end_ttl
    else
      redis.call('HSET', meta, 'next', string.sub(ARGV[a - 2], 3))
      if renew == '1' then ttl = live_ttl end
    end
    if ttl then
      for j = k, k + 2 do redis.call('PEXPIRE', KEYS[j], ttl) end
    end
    if m[3] then status = 'cancel' end
  end
  out[#out + 1] = status
end
return out
"""

# KEYS meta, log. ARGV the dead replica, stream id, end ttl ms, message.
# Returns the stream's owner (to release its limit) when this call wrote the terminal event.
LOST = """
local m = redis.call('HMGET', KEYS[1], 'replica', 'ended', 'owner', 'next')
if m[1] ~= ARGV[1] or m[2] then return false end
local seq = tonumber(m[4])
local event = cjson.encode({type = 'error', stream_id = ARGV[2], seq = seq, code = 'relay_lost',
                            message = ARGV[4], retryable = true})
redis.call('XADD', KEYS[2], '0-' .. (seq + 1), 'e', event)
redis.call('HSET', KEYS[1], 'ended', '1', 'next', seq + 1)
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
