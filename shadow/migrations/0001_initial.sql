-- strangler comparison store, PostgreSQL schema version 1.
-- Unqualified names: everything lives in the first schema of the connection's search_path.

CREATE TABLE comparisons (
    id BIGSERIAL PRIMARY KEY,
    time TIMESTAMP WITH TIME ZONE NOT NULL,
    route VARCHAR(200) NOT NULL,
    method VARCHAR(16) NOT NULL,
    path VARCHAR(1000) NOT NULL,
    request_path TEXT NOT NULL,
    status_primary INTEGER,
    status_candidate INTEGER,
    latency_primary_ms DOUBLE PRECISION,
    latency_candidate_ms DOUBLE PRECISION,
    outcome VARCHAR(20) NOT NULL,
    diff_count INTEGER NOT NULL,
    noise_count INTEGER NOT NULL,
    diff_paths TEXT NOT NULL,
    primary_body BYTEA,
    candidate_body BYTEA,
    request_id VARCHAR(128) NOT NULL,
    mode VARCHAR(16) NOT NULL,
    config_version VARCHAR(64) NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX ix_comparisons_route_time ON comparisons (route, time);
CREATE INDEX ix_comparisons_time ON comparisons (time);

CREATE TABLE comparison_paths (
    comparison_id BIGINT NOT NULL REFERENCES comparisons (id) ON DELETE CASCADE,
    kind VARCHAR(8) NOT NULL,
    pattern VARCHAR(1000) NOT NULL,
    route VARCHAR(200) NOT NULL,
    time TIMESTAMP WITH TIME ZONE NOT NULL,
    example TEXT,
    PRIMARY KEY (comparison_id, kind, pattern)
);
CREATE INDEX ix_comparison_paths_route_time ON comparison_paths (route, time);
CREATE INDEX ix_comparison_paths_time ON comparison_paths (time);

CREATE TABLE route_changes (
    id BIGSERIAL PRIMARY KEY,
    time TIMESTAMP WITH TIME ZONE NOT NULL,
    route VARCHAR(200) NOT NULL,
    actor VARCHAR(200) NOT NULL,
    kind VARCHAR(32) NOT NULL,
    from_mode VARCHAR(16),
    to_mode VARCHAR(16) NOT NULL,
    from_percent DOUBLE PRECISION,
    to_percent DOUBLE PRECISION,
    evidence TEXT NOT NULL
);
CREATE INDEX ix_route_changes_route_time ON route_changes (route, time);
