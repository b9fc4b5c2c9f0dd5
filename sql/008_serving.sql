-- Serving, version 8: A/B experiments, the exposure log of served chat answers, and feedback attributed to them.
-- An answer's response id (chatcmpl-<uuid>) names one row of chat_responses: the exact variant that produced it.
-- Feedback carrying that id gets the served experiment, arm, model and version copied from it by the capture
-- service, so reports and the A/B test never trust what a client claims it was shown.

CREATE TABLE experiments (
    name          TEXT PRIMARY KEY,
    arms          {json} NOT NULL,             -- [{"name": "A", "model": "feedback-chat", "alias": "champion", "weight": 0.5}, ...]
    eligibility   {json} NOT NULL,             -- {"intent": [...], "project": [...], "task": [...]}; {} = everyone
    baseline_arm  TEXT NOT NULL,
    started_at    {timestamp} NOT NULL,
    stopped_at    {timestamp},                 -- NULL = running
    decision      TEXT,                        -- set once, with decided_at and evidence
    decided_at    {timestamp},
    evidence      {json},
    CONSTRAINT ck_experiments_decision CHECK (decision IS NULL OR decision IN ('deploy_test_model', 'keep_baseline', 'aborted'))
);

-- One row per answer served: the exposures an A/B test counts (rated or not).
CREATE TABLE chat_responses (
    response_id        TEXT PRIMARY KEY,
    served_at          {timestamp} NOT NULL,
    experiment         TEXT,                   -- NULL: served outside any experiment
    arm                TEXT,
    registered_model   TEXT NOT NULL,          -- "base" when no registered chat model existed
    model_version      TEXT NOT NULL,
    alias              TEXT,                   -- the alias resolved to model_version, if any
    user_id            TEXT,
    session_id         TEXT,
    intent             TEXT,
    project            TEXT,
    task               TEXT,
    latency_ms         DOUBLE PRECISION,
    prompt_tokens      INTEGER,
    completion_tokens  INTEGER
);

CREATE INDEX ix_chat_responses_experiment ON chat_responses (experiment, served_at);
CREATE INDEX ix_chat_responses_served_at ON chat_responses (served_at);
CREATE INDEX ix_chat_responses_user ON chat_responses (user_id);

ALTER TABLE feedback ADD COLUMN response_id TEXT;
ALTER TABLE feedback ADD COLUMN experiment TEXT;
ALTER TABLE feedback ADD COLUMN arm TEXT;

CREATE INDEX ix_feedback_response ON feedback (response_id);
CREATE INDEX ix_feedback_experiment ON feedback (experiment, arm);
