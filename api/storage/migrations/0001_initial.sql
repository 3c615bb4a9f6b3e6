-- Repositories registered with Hobotnica. Tokens and webhook secrets are
-- Fernet-encrypted with HOBOTNICA_SECRET_KEY.
CREATE TABLE repositories (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    branch TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('cloning', 'ready', 'failed', 'revoked')),
    status_detail TEXT,
    private INTEGER NOT NULL DEFAULT 0,
    registered_by TEXT NOT NULL,
    token_encrypted TEXT NOT NULL,
    webhook_uid TEXT NOT NULL UNIQUE,
    webhook_secret_encrypted TEXT NOT NULL,
    last_job_number INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    access_checked_at REAL
);
CREATE UNIQUE INDEX repositories_full_name
    ON repositories (owner COLLATE NOCASE, name COLLATE NOCASE);

-- Variables and secrets of every repository of one owner.
CREATE TABLE owner_env (
    owner TEXT NOT NULL COLLATE NOCASE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    is_secret INTEGER NOT NULL,
    PRIMARY KEY (owner, name)
);

-- Variables and secrets of one repository; they override the owner's.
CREATE TABLE repository_env (
    repository_id INTEGER NOT NULL
        REFERENCES repositories (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    is_secret INTEGER NOT NULL,
    PRIMARY KEY (repository_id, name)
);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    repository_id INTEGER NOT NULL
        REFERENCES repositories (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('clone', 'test', 'deploy')),
    status TEXT NOT NULL CHECK (status IN (
        'queued', 'running', 'success', 'failed', 'error',
        'cancelled', 'superseded', 'timed_out', 'interrupted'
    )),
    ref TEXT,
    sha TEXT,
    exit_code INTEGER,
    reason TEXT,
    trigger TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    -- The instance running the job and the job's process group.
    runner TEXT,
    pgid INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    UNIQUE (repository_id, number)
);
CREATE INDEX jobs_active ON jobs (status, id)
    WHERE status IN ('queued', 'running');
CREATE INDEX jobs_by_kind ON jobs (repository_id, kind, number);
CREATE INDEX jobs_by_sha ON jobs (repository_id, sha, kind, number);

-- Every webhook delivery, so that a redelivery queues nothing new.
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    repository_id INTEGER NOT NULL
        REFERENCES repositories (id) ON DELETE CASCADE,
    delivery_id TEXT NOT NULL,
    event TEXT NOT NULL,
    result TEXT NOT NULL,
    job_id INTEGER REFERENCES jobs (id) ON DELETE SET NULL,
    received_at REAL NOT NULL,
    UNIQUE (repository_id, delivery_id)
);

-- Commit statuses waiting to be posted to GitHub (survives restarts and
-- GitHub outages).
CREATE TABLE status_outbox (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    context TEXT NOT NULL,
    description TEXT NOT NULL,
    target_url TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX status_outbox_due ON status_outbox (next_attempt_at);
