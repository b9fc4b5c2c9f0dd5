-- Model deployments, version 4: every release decision about a registered model version, append-only.
-- The MLflow registry holds the current aliases (champion, challenger, previous_champion); this table holds
-- the history: who moved what, why, on which evidence. Rows are written after the aliases moved, so a row
-- never claims a promotion that did not happen.

CREATE TABLE model_deployments (
    id                        {uuid} PRIMARY KEY,
    model_name                TEXT NOT NULL,           -- registered model name, e.g. feedback-chat
    version                   TEXT NOT NULL,           -- registered model version the decision is about
    family                    TEXT,                    -- chat_sft | chat_preference | embedder | reward
    action                    TEXT NOT NULL,
    decision_source           TEXT NOT NULL,
    previous_champion_version TEXT,                    -- champion before this action (NULL if none)
    evidence                  {json},                  -- metrics, test results, freed bytes ...
    mlflow_run_id             TEXT,                    -- the run holding the evidence (gate or A/B test)
    actor                     TEXT,                    -- user or automation that acted
    reason                    TEXT,
    created_at                {timestamp} NOT NULL,
    CONSTRAINT ck_deployments_action CHECK (action IN ('promote', 'keep', 'needs_review', 'approve', 'rollback', 'archive')),
    CONSTRAINT ck_deployments_source CHECK (decision_source IN ('gate', 'ab_test', 'manual', 'cleanup'))
);

-- History of one model (rollback walks it), and the latest decision about one version (approve checks it).
CREATE INDEX ix_deployments_model_time ON model_deployments (model_name, created_at);
CREATE INDEX ix_deployments_version ON model_deployments (model_name, version, created_at);
CREATE INDEX ix_deployments_action ON model_deployments (action, created_at);
