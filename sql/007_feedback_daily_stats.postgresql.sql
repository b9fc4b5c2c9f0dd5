-- Daily feedback counts, version 7 (PostgreSQL; SQLite has its own file). The stats endpoints read this small
-- table instead of scanning `feedback`. Triggers keep it right for every writer (service, bulk COPY/upsert,
-- deletes, erasure, re-ratings). They are statement-level with transition tables, so a 50k-row COPY or upsert
-- costs one GROUP BY over its changed rows, not 50k trigger calls. They only APPEND to
-- feedback_daily_stats_delta: updating the summary row of "today, this model" in every writer's transaction made
-- concurrent single-row writers queue on that one row lock. feedback_daily_stats_compact() folds the deltas
-- into the summary (the capture service calls it every few seconds); readers sum both through the view
-- feedback_daily_stats_current, so an answer is exact whether or not compaction has run.
-- NULL dimensions are stored as '' so the primary key can cover them; `day` is the UTC date of created_at.

CREATE TABLE feedback_daily_stats (
    day            DATE NOT NULL,
    model_name     TEXT NOT NULL,
    model_version  TEXT NOT NULL,
    intent         TEXT NOT NULL,
    project        TEXT NOT NULL,
    subject        TEXT NOT NULL,
    total          BIGINT NOT NULL,     -- rows
    rated          BIGINT NOT NULL,     -- rating_thumb IS NOT NULL
    likes          BIGINT NOT NULL,     -- rating_thumb = 1
    dislikes       BIGINT NOT NULL,     -- rating_thumb = -1
    neutral        BIGINT NOT NULL,     -- rating_thumb = 0
    PRIMARY KEY (day, model_name, model_version, intent, project, subject)
);
--> statement-breakpoint
CREATE TABLE feedback_daily_stats_delta (
    day            DATE NOT NULL,
    model_name     TEXT NOT NULL,
    model_version  TEXT NOT NULL,
    intent         TEXT NOT NULL,
    project        TEXT NOT NULL,
    subject        TEXT NOT NULL,
    total          BIGINT NOT NULL,
    rated          BIGINT NOT NULL,
    likes          BIGINT NOT NULL,
    dislikes       BIGINT NOT NULL,
    neutral        BIGINT NOT NULL
);
--> statement-breakpoint
CREATE VIEW feedback_daily_stats_current AS
    SELECT * FROM feedback_daily_stats UNION ALL SELECT * FROM feedback_daily_stats_delta;
--> statement-breakpoint
-- Appends TG_ARGV[0] (+1 or -1) times the counts of the statement's changed rows. One function serves every
-- trigger because each names its transition table `changed_rows`; an UPDATE runs it twice (new rows +1, old -1).
CREATE FUNCTION feedback_daily_stats_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sign BIGINT := TG_ARGV[0]::BIGINT;
BEGIN
    INSERT INTO feedback_daily_stats_delta
    SELECT (created_at AT TIME ZONE 'UTC')::date, coalesce(model_name, ''), coalesce(model_version, ''),
           coalesce(intent, ''), coalesce(project, ''), coalesce(subject, ''),
           sign * count(*), sign * count(rating_thumb), sign * count(*) FILTER (WHERE rating_thumb = 1),
           sign * count(*) FILTER (WHERE rating_thumb = -1), sign * count(*) FILTER (WHERE rating_thumb = 0)
    FROM changed_rows
    GROUP BY 1, 2, 3, 4, 5, 6;
    RETURN NULL;
END
$$;
--> statement-breakpoint
-- Moves every committed delta into the summary; returns the delta rows moved (0 when another session holds the
-- compaction lock). ORDER BY: concurrent compactions would lock summary rows in the same order.
CREATE FUNCTION feedback_daily_stats_compact() RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    moved BIGINT;
BEGIN
    IF NOT pg_try_advisory_xact_lock(7007) THEN
        RETURN 0;
    END IF;
    CREATE TEMP TABLE IF NOT EXISTS feedback_daily_stats_moved (LIKE feedback_daily_stats_delta) ON COMMIT DELETE ROWS;
    WITH gone AS (DELETE FROM feedback_daily_stats_delta RETURNING *)
    INSERT INTO feedback_daily_stats_moved SELECT * FROM gone;
    GET DIAGNOSTICS moved = ROW_COUNT;
    INSERT INTO feedback_daily_stats AS s
    SELECT day, model_name, model_version, intent, project, subject,
           sum(total), sum(rated), sum(likes), sum(dislikes), sum(neutral)
    FROM feedback_daily_stats_moved
    GROUP BY 1, 2, 3, 4, 5, 6
    ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (day, model_name, model_version, intent, project, subject) DO UPDATE SET
        total = s.total + excluded.total, rated = s.rated + excluded.rated, likes = s.likes + excluded.likes,
        dislikes = s.dislikes + excluded.dislikes, neutral = s.neutral + excluded.neutral;
    -- keys whose last row left: drop them, so the summary holds only days with feedback
    DELETE FROM feedback_daily_stats s USING (SELECT DISTINCT day FROM feedback_daily_stats_moved) m
    WHERE s.total = 0 AND s.day = m.day;
    TRUNCATE feedback_daily_stats_moved;
    RETURN moved;
END
$$;
--> statement-breakpoint
CREATE TRIGGER feedback_daily_stats_insert AFTER INSERT ON feedback
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION feedback_daily_stats_apply('1');
--> statement-breakpoint
-- Same-event triggers fire in name order: "_new" before "_old", so counts never dip below zero in between.
CREATE TRIGGER feedback_daily_stats_update_new AFTER UPDATE ON feedback
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION feedback_daily_stats_apply('1');
--> statement-breakpoint
CREATE TRIGGER feedback_daily_stats_update_old AFTER UPDATE ON feedback
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION feedback_daily_stats_apply('-1');
--> statement-breakpoint
CREATE TRIGGER feedback_daily_stats_delete AFTER DELETE ON feedback
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION feedback_daily_stats_apply('-1');
--> statement-breakpoint
-- Backfill after the triggers exist: CREATE TRIGGER holds a lock that blocks writers until this migration
-- commits, so no row can land between the backfill and the first trigger call.
INSERT INTO feedback_daily_stats
SELECT (created_at AT TIME ZONE 'UTC')::date, coalesce(model_name, ''), coalesce(model_version, ''),
       coalesce(intent, ''), coalesce(project, ''), coalesce(subject, ''),
       count(*), count(rating_thumb), count(*) FILTER (WHERE rating_thumb = 1),
       count(*) FILTER (WHERE rating_thumb = -1), count(*) FILTER (WHERE rating_thumb = 0)
FROM feedback
GROUP BY 1, 2, 3, 4, 5, 6;
