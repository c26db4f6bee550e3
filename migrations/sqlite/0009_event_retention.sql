-- Event retention. The log is pruned from its oldest end by age and count;
-- `floor` is the highest sequence pruned so far, so that a watcher resuming
-- from below it is told (FAILED_PRECONDITION) instead of silently skipping.
CREATE TABLE event_log (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    floor BIGINT NOT NULL
);
INSERT INTO event_log (id, floor) VALUES (1, 0);

-- Retention finds its cut by time; ListEvents filters by subject.
CREATE INDEX events_at ON events (at);
CREATE INDEX events_subject_seq ON events (subject, seq);
