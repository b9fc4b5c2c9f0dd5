-- Daily feedback counts, version 7 (SQLite; PostgreSQL has its own file). The stats endpoints read this small
-- table instead of scanning `feedback`. Row-level triggers keep it right for every writer (SQLite has no
-- statement-level triggers). NULL dimensions are stored as '' so the primary key can cover them; `day` is the
-- UTC date of created_at (stored as naive UTC text), as 'YYYY-MM-DD'. SQLite has one writer at a time, so the
-- triggers update the summary directly; the delta table and the view only mirror the PostgreSQL layout that the
-- readers query (the delta stays empty here).

CREATE TABLE feedback_daily_stats (
    day            TEXT NOT NULL,
    model_name     TEXT NOT NULL,
    model_version  TEXT NOT NULL,
    intent         TEXT NOT NULL,
    project        TEXT NOT NULL,
    subject        TEXT NOT NULL,
    total          INTEGER NOT NULL,
    rated          INTEGER NOT NULL,
    likes          INTEGER NOT NULL,
    dislikes       INTEGER NOT NULL,
    neutral        INTEGER NOT NULL,
    PRIMARY KEY (day, model_name, model_version, intent, project, subject)
) WITHOUT ROWID;
--> statement-breakpoint
CREATE TABLE feedback_daily_stats_delta (
    day TEXT NOT NULL, model_name TEXT NOT NULL, model_version TEXT NOT NULL, intent TEXT NOT NULL,
    project TEXT NOT NULL, subject TEXT NOT NULL, total INTEGER NOT NULL, rated INTEGER NOT NULL,
    likes INTEGER NOT NULL, dislikes INTEGER NOT NULL, neutral INTEGER NOT NULL
);
--> statement-breakpoint
CREATE VIEW feedback_daily_stats_current AS
    SELECT * FROM feedback_daily_stats UNION ALL SELECT * FROM feedback_daily_stats_delta;
--> statement-breakpoint
CREATE TRIGGER feedback_daily_stats_insert AFTER INSERT ON feedback BEGIN
    INSERT INTO feedback_daily_stats VALUES (
        date(NEW.created_at), coalesce(NEW.model_name, ''), coalesce(NEW.model_version, ''),
        coalesce(NEW.intent, ''), coalesce(NEW.project, ''), coalesce(NEW.subject, ''),
        1, NEW.rating_thumb IS NOT NULL, NEW.rating_thumb IS 1, NEW.rating_thumb IS -1, NEW.rating_thumb IS 0)
    ON CONFLICT (day, model_name, model_version, intent, project, subject) DO UPDATE SET
        total = total + excluded.total, rated = rated + excluded.rated, likes = likes + excluded.likes,
        dislikes = dislikes + excluded.dislikes, neutral = neutral + excluded.neutral;
END;
--> statement-breakpoint
CREATE TRIGGER feedback_daily_stats_delete AFTER DELETE ON feedback BEGIN
    UPDATE feedback_daily_stats SET
        total = total - 1, rated = rated - (OLD.rating_thumb IS NOT NULL), likes = likes - (OLD.rating_thumb IS 1),
        dislikes = dislikes - (OLD.rating_thumb IS -1), neutral = neutral - (OLD.rating_thumb IS 0)
    WHERE day = date(OLD.created_at) AND model_name = coalesce(OLD.model_name, '')
      AND model_version = coalesce(OLD.model_version, '') AND intent = coalesce(OLD.intent, '')
      AND project = coalesce(OLD.project, '') AND subject = coalesce(OLD.subject, '');
    DELETE FROM feedback_daily_stats
    WHERE total = 0 AND day = date(OLD.created_at) AND model_name = coalesce(OLD.model_name, '')
      AND model_version = coalesce(OLD.model_version, '') AND intent = coalesce(OLD.intent, '')
      AND project = coalesce(OLD.project, '') AND subject = coalesce(OLD.subject, '');
END;
--> statement-breakpoint
-- A re-rating (upsert UPDATE) that touches none of the counted columns costs nothing.
CREATE TRIGGER feedback_daily_stats_update AFTER UPDATE OF created_at, model_name, model_version, intent, project,
    subject, rating_thumb ON feedback
    WHEN OLD.created_at IS NOT NEW.created_at OR OLD.model_name IS NOT NEW.model_name
      OR OLD.model_version IS NOT NEW.model_version OR OLD.intent IS NOT NEW.intent
      OR OLD.project IS NOT NEW.project OR OLD.subject IS NOT NEW.subject OR OLD.rating_thumb IS NOT NEW.rating_thumb
BEGIN
    INSERT INTO feedback_daily_stats VALUES (
        date(NEW.created_at), coalesce(NEW.model_name, ''), coalesce(NEW.model_version, ''),
        coalesce(NEW.intent, ''), coalesce(NEW.project, ''), coalesce(NEW.subject, ''),
        1, NEW.rating_thumb IS NOT NULL, NEW.rating_thumb IS 1, NEW.rating_thumb IS -1, NEW.rating_thumb IS 0)
    ON CONFLICT (day, model_name, model_version, intent, project, subject) DO UPDATE SET
        total = total + excluded.total, rated = rated + excluded.rated, likes = likes + excluded.likes,
        dislikes = dislikes + excluded.dislikes, neutral = neutral + excluded.neutral;
    UPDATE feedback_daily_stats SET
        total = total - 1, rated = rated - (OLD.rating_thumb IS NOT NULL), likes = likes - (OLD.rating_thumb IS 1),
        dislikes = dislikes - (OLD.rating_thumb IS -1), neutral = neutral - (OLD.rating_thumb IS 0)
    WHERE day = date(OLD.created_at) AND model_name = coalesce(OLD.model_name, '')
      AND model_version = coalesce(OLD.model_version, '') AND intent = coalesce(OLD.intent, '')
      AND project = coalesce(OLD.project, '') AND subject = coalesce(OLD.subject, '');
    DELETE FROM feedback_daily_stats
    WHERE total = 0 AND day = date(OLD.created_at) AND model_name = coalesce(OLD.model_name, '')
      AND model_version = coalesce(OLD.model_version, '') AND intent = coalesce(OLD.intent, '')
      AND project = coalesce(OLD.project, '') AND subject = coalesce(OLD.subject, '');
END;
--> statement-breakpoint
INSERT INTO feedback_daily_stats
SELECT date(created_at), coalesce(model_name, ''), coalesce(model_version, ''), coalesce(intent, ''),
       coalesce(project, ''), coalesce(subject, ''), count(*), count(rating_thumb),
       sum(rating_thumb IS 1), sum(rating_thumb IS -1), sum(rating_thumb IS 0)
FROM feedback
GROUP BY 1, 2, 3, 4, 5, 6;
