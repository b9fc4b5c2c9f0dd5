-- Improvement suggestions, version 3: what the error analysis recommends, with its evidence,
-- kept as rows so sensors and an API can act on them. Each analysis run replaces its own rows.

CREATE TABLE improvement_suggestions (
    run_id       TEXT NOT NULL,             -- the analysis run that produced it
    rank         INTEGER NOT NULL,          -- 1 = highest priority in that run
    kind         TEXT NOT NULL,             -- sft_candidates | length_gap | error_type | too_little_data | cluster_trend
    target       TEXT NOT NULL,             -- the cluster, segment or error type it is about
    title        TEXT NOT NULL,
    evidence     TEXT NOT NULL,
    metrics      {json},
    priority     DOUBLE PRECISION NOT NULL,
    created_at   {timestamp} NOT NULL,
    PRIMARY KEY (run_id, rank)
);

CREATE INDEX ix_suggestions_created ON improvement_suggestions (created_at);
CREATE INDEX ix_suggestions_kind ON improvement_suggestions (kind, target);
