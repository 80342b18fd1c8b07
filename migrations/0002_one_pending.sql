-- At most one pending recommendation per workload, even when several replicas of prescale
-- propose at once on one database. Older duplicates (from before this index) are superseded
-- first, keeping the newest.

UPDATE recommendations SET state = 'superseded'
WHERE state = 'pending' AND EXISTS (
    SELECT 1 FROM recommendations newer
    WHERE newer.namespace = recommendations.namespace
      AND newer.workload = recommendations.workload
      AND newer.state = 'pending'
      AND (newer.created_at > recommendations.created_at
           OR (newer.created_at = recommendations.created_at AND newer.id > recommendations.id))
);

CREATE UNIQUE INDEX recommendations_one_pending ON recommendations (namespace, workload)
    WHERE state = 'pending';
