-- What every loop reads of the recommendations, one row per workload: the state of its
-- newest recommendation (a wish that expired or failed may be proposed again) and the
-- replicas of its newest applied one (what KEDA is served after a restart). Every write to
-- a workload's recommendations updates its row in the same transaction, so a loop reads one
-- row per workload instead of grouping the whole history. The store rebuilds the table
-- from the recommendations at each start, which also mends it after an older binary (one
-- that does not know it) wrote.
CREATE TABLE heads (
    namespace        TEXT NOT NULL,
    workload         TEXT NOT NULL,
    newest_state     TEXT,
    applied_replicas BIGINT,
    PRIMARY KEY (namespace, workload)
);
