"""The Redis store's decisions, one Lua script each (Redis runs a script alone, so
each is atomic across every gateway process, as one SQL function under a row
lock is in PostgreSQL; see migration 0005 for the same logic in SQL).

Keys of one gateway key (hash tag ``{id}``: all in one Cluster slot), with ``S``
the period start and ``W`` the rate window start in epoch seconds:

- ``<prefix>{id}:b:S`` hash ``used``, ``reserved`` — the period's counter;
- ``<prefix>{id}:l:S`` hash lease → tokens it holds;
- ``<prefix>{id}:e:S`` sorted set lease → expiry (Redis server time, ms);
- ``<prefix>{id}:r:W`` hash ``requests``, ``tokens`` — one rate minute.

Times come from the Redis server (``TIME``), so the gateways' clocks never
decide whether a lease expired. Needs Redis ≥ 5 (scripts replicate their
effects, so ``TIME`` before a write is allowed).
"""

from __future__ import annotations

# Shared head of RESERVE: the server's clock in ms, then leases nobody renewed
# any more (their process died) give their tokens back.
_RECLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1000)
if #expired > 0 then
  local back = 0
  for _, lease in ipairs(expired) do
    back = back + tonumber(redis.call('HGET', KEYS[2], lease) or '0')
  end
  redis.call('HDEL', KEYS[2], unpack(expired))
  redis.call('ZREM', KEYS[3], unpack(expired))
  local held = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
  redis.call('HSET', KEYS[1], 'reserved', math.max(held - back, 0))
end
"""

# KEYS: counter, leases, expiry. ARGV: budget, lease ('' = only read what is
# free), want, minimum, lease ms, counter expiry (epoch ms; '0' = never).
# Returns {granted, free before}; grants min(want, free) when that is >= minimum.
RESERVE = (
    _RECLAIM
    + """
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local free = math.max(tonumber(ARGV[1]) - used - reserved, 0)
if ARGV[2] == '' then return {0, free} end
local grant = math.min(tonumber(ARGV[3]), free)
if grant < tonumber(ARGV[4]) or grant <= 0 then return {0, free} end
redis.call('HINCRBY', KEYS[1], 'reserved', grant)
redis.call('HINCRBY', KEYS[2], ARGV[2], grant)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[2])
if ARGV[6] ~= '0' then
  for i = 1, 3 do redis.call('PEXPIREAT', KEYS[i], ARGV[6]) end
end
return {grant, free}
"""
)

# KEYS: the window. ARGV: rpm, tpm, input tokens, enforce ('1'/'0'), window
# expiry (epoch ms). Returns {allowed, requests, tokens}; nothing is counted for
# an enforced refusal.
RATE = """
local requests = tonumber(redis.call('HGET', KEYS[1], 'requests') or '0')
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or '0')
local rpm, tpm, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local over = (rpm > 0 and requests + 1 > rpm) or (tpm > 0 and tokens + n > tpm)
if (not over) or ARGV[4] == '0' then
  redis.call('HINCRBY', KEYS[1], 'requests', 1)
  redis.call('HINCRBY', KEYS[1], 'tokens', n)
  redis.call('PEXPIREAT', KEYS[1], ARGV[5])
  requests, tokens = requests + 1, tokens + n
end
if over then return {0, requests, tokens} end
return {1, requests, tokens}
"""

# A batch of settlements. Per settlement, KEYS: counter, leases, expiry, window;
# ARGV: lease ('' = none), charged to a period ('1'/'0'), charge, counter expiry
# (epoch ms, '0' = never), window tokens, window expiry (epoch ms).
# The lease's tokens leave ``reserved`` only if the lease is still there: one a
# reservation already reclaimed (it expired) gave them back then. So a lease is
# released exactly once, and ``used`` is charged exactly once.
SETTLE = """
for i = 0, #KEYS / 4 - 1 do
  local k, a = i * 4, i * 6
  local lease = ARGV[a + 1]
  local held = 0
  if lease ~= '' then
    held = tonumber(redis.call('HGET', KEYS[k + 2], lease) or '0')
    redis.call('HDEL', KEYS[k + 2], lease)
    redis.call('ZREM', KEYS[k + 3], lease)
  end
  if ARGV[a + 2] == '1' then
    redis.call('HINCRBY', KEYS[k + 1], 'used', ARGV[a + 3])
    if held > 0 then
      local reserved = tonumber(redis.call('HGET', KEYS[k + 1], 'reserved') or '0')
      redis.call('HSET', KEYS[k + 1], 'reserved', math.max(reserved - held, 0))
    end
    if ARGV[a + 4] ~= '0' then redis.call('PEXPIREAT', KEYS[k + 1], ARGV[a + 4]) end
  end
  if tonumber(ARGV[a + 5]) > 0 then
    redis.call('HINCRBY', KEYS[k + 4], 'tokens', ARGV[a + 5])
    redis.call('PEXPIREAT', KEYS[k + 4], ARGV[a + 6])
  end
end
return #KEYS / 4
"""

# KEYS: the expiry set of each lease; ARGV: lease ms, then the leases in KEYS'
# order. XX: a lease already reclaimed (or settled) is not brought back.
RENEW = """
local t = redis.call('TIME')
local until_ = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 1, #KEYS do redis.call('ZADD', KEYS[i], 'XX', until_, ARGV[i + 1]) end
return #KEYS
"""

# KEYS: a counter. ARGV: tokens the usage records show, counter expiry (epoch ms,
# '0' = never). Raises ``used`` to the records' figure, never lowers it.
RAISE_USED = """
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
local counted = tonumber(ARGV[1])
if counted > used then
  redis.call('HSET', KEYS[1], 'used', ARGV[1])
  used = counted
  if ARGV[2] ~= '0' then redis.call('PEXPIREAT', KEYS[1], ARGV[2]) end
end
return used
"""
