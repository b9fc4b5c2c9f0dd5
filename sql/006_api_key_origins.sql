-- API keys scoped to browser origins, version 6. A key with `origins` set (comma-separated, e.g.
-- `https://chat.example,https://staging.chat.example`) is accepted only on requests whose Origin header is one of
-- them: the feedback widget embeds its key in a page, so the key must be useless from any other site.
-- NULL = any caller (server-to-server importers, scripts).

ALTER TABLE api_keys ADD COLUMN origins TEXT;
