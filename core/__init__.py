"""The base every package stands on: errors that carry their wire answer, clocks, message ids,
device tokens and keys, rate limits, the outage logger and task shutdown. `core.redis` is the
one Redis base (clients, scripts, key names, outage translation); nothing else here imports
Redis."""
