-- Cleaned feedback, version 2: the output of cleaning, rewritten one window (day) at a time.
-- A window is replaced by deleting its rows and inserting the new ones in one transaction,
-- so re-running a day or backfilling a range never duplicates rows.

CREATE TABLE cleaned_feedback (
    id                    {uuid} PRIMARY KEY,       -- same id as the feedback row it comes from
    partition_date        TEXT NOT NULL,            -- UTC day of created_at, YYYY-MM-DD
    created_at            {timestamp} NOT NULL,
    updated_at            {timestamp} NOT NULL,
    ingested_at           {timestamp} NOT NULL,
    user_id               TEXT,
    session_id            TEXT,
    message_index         INTEGER,
    query                 TEXT NOT NULL,            -- redacted
    history               {json},                   -- redacted
    response              TEXT NOT NULL,            -- redacted
    model_name            TEXT,
    model_version         TEXT,
    intent                TEXT,
    project               TEXT,
    subject               TEXT,
    rating                DOUBLE PRECISION NOT NULL,
    rating_thumb          SMALLINT,
    rating_stars          SMALLINT,
    rating_raw            TEXT,
    rating_scale          TEXT,
    comment               TEXT,                     -- redacted
    tools_called          {json},
    retrieved_context     {json},                   -- redacted
    latency_ms            DOUBLE PRECISION,
    prompt_tokens         INTEGER,
    completion_tokens     INTEGER,
    source                TEXT NOT NULL,
    metadata              {json},
    label                 TEXT NOT NULL,            -- liked | disliked | neutral
    pii_redacted          INTEGER NOT NULL,         -- identifiers replaced in this row
    duplicate_count       INTEGER NOT NULL,         -- rows (any user) with the same query and response
    spam_reason           TEXT,                     -- why the row looks like bot/spam feedback, NULL if clean
    exclude_from_training BOOLEAN NOT NULL,
    cleaned_at            {timestamp} NOT NULL
);

CREATE INDEX ix_cleaned_partition ON cleaned_feedback (partition_date);
CREATE INDEX ix_cleaned_model_label ON cleaned_feedback (model_name, model_version, label);
