-- The data plane, version 9: data stays in the database. Cleaning writes the cleaned_feedback table in bounded
-- chunks, analyses read stable samples of it, rejected rows are kept as ids and reasons (never text), and every
-- artifact quoting a feedback row's text is recorded so erasure can remove it.

-- A stable sample key: the first 16 hex digits of sha256(id). Analyses that need Python (clusters, patterns) read
-- the rows with the smallest keys, so a sample is the same from run to run and bounded at any table size.
ALTER TABLE cleaned_feedback ADD COLUMN sample_key TEXT;
CREATE INDEX ix_cleaned_sample ON cleaned_feedback (sample_key);

-- Why cleaning rejected a stored row: ids and reasons only. Erasure deletes a user's rows here too.
CREATE TABLE rejected_feedback (
    id              {uuid} PRIMARY KEY,       -- the feedback row's id
    partition_date  TEXT,                     -- UTC day of created_at (NULL when unreadable)
    reject_reason   TEXT NOT NULL,            -- 'field: reason' joined by '; '
    rejected_at     {timestamp} NOT NULL
);
CREATE INDEX ix_rejected_partition ON rejected_feedback (partition_date);

-- Which artifact quotes which feedback row's (redacted) text: a report file ('file:reports/error_patterns.md',
-- relative to the data directory) or a run's suggestions ('suggestions:<run_id>'). Erasure removes each
-- artifact that quotes an erased row; the next analysis run writes it again from the remaining feedback.
CREATE TABLE feedback_quotes (
    artifact     TEXT NOT NULL,
    feedback_id  TEXT NOT NULL,
    PRIMARY KEY (artifact, feedback_id)
);
CREATE INDEX ix_quotes_feedback ON feedback_quotes (feedback_id);

-- The retraining sensor's "rated rows ingested since the watermark": an index-only range scan of the rated rows,
-- whose cost follows the new rows, not the table.
CREATE INDEX ix_feedback_rated_ingested ON feedback (ingested_at) WHERE rating_thumb <> 0;

-- Windows of the cleaned table are read in (created_at, id) order by keyset pagination (datasets stream from it).
CREATE INDEX ix_cleaned_created ON cleaned_feedback (created_at, id);
