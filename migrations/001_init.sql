-- pgnd's first schema. store_open applies each migration once, inside its own transaction, and
-- records it in schema_migrations (the row is written by store_open, not by this file).

CREATE TABLE schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_ms INTEGER NOT NULL
);

CREATE TABLE jobs (
    -- AUTOINCREMENT: an id is never reused, so URLs, job directories and logs that name a deleted
    -- job can never point at a new one.
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    type             TEXT    NOT NULL,
    owner            TEXT    NOT NULL DEFAULT '',
    -- Names as job_state_name() spells them, so the database reads well in the sqlite3 shell.
    state            TEXT    NOT NULL
                     CHECK (state IN ('queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled')),
    priority         INTEGER NOT NULL DEFAULT 0,
    params_json      TEXT    NOT NULL DEFAULT '{}',
    error            TEXT,
    created_ms       INTEGER NOT NULL,
    started_ms       INTEGER NOT NULL DEFAULT 0,
    finished_ms      INTEGER NOT NULL DEFAULT 0,
    step             INTEGER NOT NULL DEFAULT 0,
    total_steps      INTEGER NOT NULL DEFAULT 0,
    checkpoint_step  INTEGER NOT NULL DEFAULT -1,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    pause_requested  INTEGER NOT NULL DEFAULT 0
);
-- Claim: the best queued job is the first entry under state = 'queued'.
CREATE INDEX jobs_claim ON jobs (state, priority DESC, id);
-- Listing newest first, filtered by state or by type.
CREATE INDEX jobs_state_id ON jobs (state, id);
CREATE INDEX jobs_type_id ON jobs (type, id);

-- One value per (job, key, step); appending the same triple again replaces the value. The primary
-- key is the (job, key, step) index that series queries walk in step order; WITHOUT ROWID stores
-- the rows in that index itself instead of keeping a second copy of every point.
CREATE TABLE metrics (
    job   INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step  INTEGER NOT NULL,
    key   TEXT    NOT NULL,
    value REAL,            -- NULL is NaN (SQLite turns NaN into NULL)
    PRIMARY KEY (job, key, step)
) WITHOUT ROWID;

CREATE TABLE events (
    -- AUTOINCREMENT: ids only ever grow, so an SSE client's Last-Event-ID stays meaningful.
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    job   INTEGER REFERENCES jobs (id) ON DELETE CASCADE, -- NULL for daemon-wide events (job 0)
    type  TEXT    NOT NULL,
    data  TEXT    NOT NULL DEFAULT '{}',
    at_ms INTEGER NOT NULL
);
CREATE INDEX events_job_id ON events (job, id);

CREATE TABLE artifacts (
    id     INTEGER PRIMARY KEY,
    job    INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name   TEXT    NOT NULL,
    path   TEXT    NOT NULL,
    kind   TEXT    NOT NULL DEFAULT '',
    size   INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT    NOT NULL DEFAULT '',
    step   INTEGER NOT NULL DEFAULT -1,
    at_ms  INTEGER NOT NULL,
    UNIQUE (job, name)
);

CREATE TABLE checkpoints (
    id     INTEGER PRIMARY KEY,
    job    INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step   INTEGER NOT NULL,
    name   TEXT    NOT NULL DEFAULT '',
    path   TEXT    NOT NULL,
    size   INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT    NOT NULL DEFAULT '',
    at_ms  INTEGER NOT NULL,
    UNIQUE (job, step) -- a checkpoint written again at the same step replaces the row
);

CREATE TABLE tokens (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    role       TEXT    NOT NULL CHECK (role IN ('read', 'submit', 'admin')),
    sha256     TEXT    NOT NULL UNIQUE, -- lowercase hex of the token's SHA-256; never the token
    created_ms INTEGER NOT NULL,
    revoked    INTEGER NOT NULL DEFAULT 0
);
