-- The hourly prune keeps each workload's newest applied recommendation: an index that finds
-- it without visiting the workload's other rows (without it the prune is quadratic in them),
-- and one that finds old audit entries without scanning the log.
CREATE INDEX recommendations_applied ON recommendations (namespace, workload, state, updated_at);
CREATE INDEX audit_by_at ON audit (at);
