-- Nodes of a cluster: when each last heard NATS. A node cut off from NATS reads this to tell whether the
-- others still have it (then it is the one partitioned away, and sends its users to them) or NATS is down
-- for everyone (then it keeps serving its own users).
CREATE TABLE cluster_nodes (
    node BIGINT NOT NULL PRIMARY KEY,
    nats_seen BIGINT NOT NULL
)
