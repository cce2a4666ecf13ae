-- skiplock schema, version 6: an elected leader for cluster-wide work.
--
-- With hundreds of workers on one database, the work of the whole database (maintenance rounds,
-- firing schedules, the queue-wide depth metrics) is done by one of them: the holder of the
-- `maintenance` row here, renewed by its heartbeat and taken over by another worker's heartbeat
-- once it expired. A row, not a session advisory lock: it works through a transaction pooler.
CREATE TABLE skiplock.leaders (
    name       text        PRIMARY KEY,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);
