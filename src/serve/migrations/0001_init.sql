-- One schema for SQLite and PostgreSQL: text, 64-bit integers (times are Unix milliseconds,
-- flags 0/1) and JSON kept as text, so that the same statements run on both.

CREATE TABLE templates (
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE experiments (
    id TEXT PRIMARY KEY,
    template_name TEXT,
    template_version BIGINT,
    template TEXT NOT NULL,
    schedule TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    seed BIGINT,
    hosts TEXT NOT NULL,
    journal_path TEXT NOT NULL,
    replica TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    ended_at BIGINT,
    report TEXT,
    junit TEXT
);

CREATE INDEX experiments_state ON experiments (state);

CREATE TABLE journal (
    experiment_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    entry TEXT NOT NULL,
    PRIMARY KEY (experiment_id, seq)
);

CREATE TABLE schedules (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    paused BIGINT NOT NULL,
    checked_until BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

-- One row per fire time a replica decided on: the primary key is what makes two replicas
-- start a scheduled run once.
CREATE TABLE schedule_runs (
    schedule TEXT NOT NULL,
    fire_at BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    experiment_id TEXT,
    reason TEXT,
    replica TEXT NOT NULL,
    PRIMARY KEY (schedule, fire_at)
);

CREATE TABLE lever_history (
    seq BIGINT PRIMARY KEY,
    engaged BIGINT NOT NULL,
    reason TEXT NOT NULL,
    changed_by TEXT NOT NULL,
    changed_at BIGINT NOT NULL
);

CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    heartbeat_at BIGINT NOT NULL
);
