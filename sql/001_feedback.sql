-- Feedback store, version 1. The single source of truth for the schema.
-- Written once for both engines: the migrate command replaces the type placeholders
-- {uuid} {json} {timestamp} {bigint} with PostgreSQL or SQLite types.

CREATE TABLE feedback (
    id                 {uuid} PRIMARY KEY,
    created_at         {timestamp} NOT NULL,          -- when the user gave the feedback
    updated_at         {timestamp} NOT NULL,          -- last change (a re-rating updates it)
    ingested_at        {timestamp} NOT NULL,          -- when the store received it (sensor watermark)
    user_id            TEXT,
    session_id         TEXT,                          -- conversation id
    message_index      INTEGER,                       -- position of the response in the conversation
    query              TEXT NOT NULL,                 -- the user question answered by `response`
    history            {json},                        -- [{"role": ..., "content": ...}] before the query
    response           TEXT NOT NULL,
    model_name         TEXT,
    model_version      TEXT,                          -- the exact variant that produced the response
    intent             TEXT,
    project            TEXT,
    subject            TEXT,
    rating             DOUBLE PRECISION,              -- normalised onto [-1, 1]; NULL = not rated
    rating_thumb       SMALLINT,                      -- -1 / 0 / +1 derived from rating
    rating_stars       SMALLINT,                      -- 1..5 when the source gave stars
    rating_raw         TEXT,                          -- the rating exactly as the source sent it
    rating_scale       TEXT,                          -- thumbs | stars | votes | label
    comment            TEXT,
    tools_called       {json},                        -- ["search", ...] or [{"name": ..., ...}]
    retrieved_context  {json},                        -- documents given to the model (RAG)
    latency_ms         DOUBLE PRECISION,
    prompt_tokens      INTEGER,
    completion_tokens  INTEGER,
    source             TEXT NOT NULL,                 -- importer or application that sent it
    metadata           {json},
    CONSTRAINT ck_feedback_rating CHECK (rating IS NULL OR (rating >= -1 AND rating <= 1)),
    CONSTRAINT ck_feedback_thumb CHECK (rating_thumb IS NULL OR rating_thumb IN (-1, 0, 1)),
    CONSTRAINT ck_feedback_stars CHECK (rating_stars IS NULL OR (rating_stars >= 1 AND rating_stars <= 5))
);

-- Analytics by time and the sensor's "new rows since" query.
CREATE INDEX ix_feedback_created_at ON feedback (created_at);
CREATE INDEX ix_feedback_ingested_at ON feedback (ingested_at);
-- Like-rate per model / version.
CREATE INDEX ix_feedback_model_rating ON feedback (model_name, model_version, rating_thumb);
-- Segment breakdowns.
CREATE INDEX ix_feedback_subject ON feedback (subject);
CREATE INDEX ix_feedback_intent ON feedback (intent);
CREATE INDEX ix_feedback_project ON feedback (project);
CREATE INDEX ix_feedback_session ON feedback (session_id, message_index);
