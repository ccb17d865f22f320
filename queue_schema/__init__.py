"""The contract every bbo-arena process shares: payloads, Redis keys, ids, states, the optimizer protocol.

Nothing in here imports the rest of the project, so a worker on another machine, the gateway and the
console agree on the shape of every value they exchange.
"""

SCHEMA_VERSION = 1
