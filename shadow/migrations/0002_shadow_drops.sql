-- strangler comparison store, PostgreSQL schema version 2: shadow copies dropped, by reason.
-- A drop has no comparison row (one per shed copy would load the store exactly when the
-- proxy sheds): each recorder adds what it dropped since its previous batch, about once a
-- second, numbered (writer, seq) so that a batch sent again after a lost answer adds nothing.

CREATE TABLE shadow_drops (
    time TIMESTAMP WITH TIME ZONE NOT NULL,
    route VARCHAR(200) NOT NULL,
    reason VARCHAR(40) NOT NULL,
    copies BIGINT NOT NULL,
    writer VARCHAR(32) NOT NULL,
    seq BIGINT NOT NULL
);
CREATE INDEX ix_shadow_drops_route_time ON shadow_drops (route, time);
CREATE INDEX ix_shadow_drops_time ON shadow_drops (time);
CREATE UNIQUE INDEX ux_shadow_drops_batch ON shadow_drops (writer, seq, route, reason);
