-- -------------------------------------------------------------------------
-- CDC: published tables
-- -------------------------------------------------------------------------

-- Tables whose changes the CDC publisher sends to Kafka.  A
-- user_catalog_table, so that the output plugin reads it under the historic
-- snapshot of each decoded change: a change is published exactly when its
-- table was published at its commit.
CREATE TABLE kappa.published_tables (
    relid regclass PRIMARY KEY,
    topic text CHECK (topic IS NULL OR topic ~ '^[A-Za-z0-9._-]{1,249}$'),
    published_at timestamptz NOT NULL DEFAULT now(),
    published_by name NOT NULL DEFAULT current_user
) WITH (user_catalog_table = true);

COMMENT ON TABLE kappa.published_tables IS
    'Tables published to Kafka by the pg_kappa CDC publisher (topic NULL: kappa.sales_topic)';

SELECT pg_catalog.pg_extension_config_dump('kappa.published_tables', '');

CREATE FUNCTION kappa.publish_table(tbl regclass, topic text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'kappa_publish_table'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION kappa.publish_table(regclass, text) IS
    'Publish the table''s committed changes to Kafka; returns the number of existing rows sent as snapshot events';

CREATE FUNCTION kappa.unpublish_table(tbl regclass)
RETURNS boolean
AS 'MODULE_PATHNAME', 'kappa_unpublish_table'
LANGUAGE C VOLATILE STRICT;

COMMENT ON FUNCTION kappa.unpublish_table(regclass) IS
    'Stop publishing the table''s changes';

-- Dropping a published table unpublishes it.
CREATE FUNCTION kappa.forget_dropped_tables()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM kappa.published_tables p
     USING pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_catalog.pg_class'::regclass
       AND d.objsubid = 0
       AND d.objid = p.relid::oid;
END
$$;

CREATE EVENT TRIGGER kappa_forget_dropped_tables ON sql_drop
    EXECUTE FUNCTION kappa.forget_dropped_tables();

-- A published table keeps what kappa.publish_table() checked: a primary key
-- (the message key), a replica identity that carries it in deletes, and
-- changes written to WAL.  DDL that takes one of them away is refused:
-- deletes would go out without a key, updates of the key without the old
-- one, or changes would stop reaching WAL, and nothing downstream could
-- tell.  The replica identity and persistence are checked after ALTER
-- TABLE; the primary key when something is dropped (a check after ALTER
-- TABLE would also refuse a restore of a dump, which adds a published
-- table's other constraints before its primary key).
CREATE FUNCTION kappa.check_published_tables()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
BEGIN
    IF NOT EXISTS (SELECT FROM kappa.published_tables) THEN
        RETURN;
    END IF;
    FOR t IN
        SELECT c.oid::regclass AS tbl, c.relreplident, c.relpersistence
          FROM pg_event_trigger_ddl_commands() d
          JOIN pg_class c ON c.oid = d.objid
          JOIN kappa.published_tables p ON p.relid = c.oid
         WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0
    LOOP
        IF t.relreplident NOT IN ('d', 'f') THEN
            RAISE EXCEPTION 'table % is published to Kafka and must keep replica identity DEFAULT or FULL', t.tbl
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'Deletes and updates of the key must carry the primary key, which is the message key.',
                      HINT = 'Unpublish it first with kappa.unpublish_table().';
        ELSIF t.relpersistence <> 'p' THEN
            RAISE EXCEPTION 'table % is published to Kafka and cannot be made unlogged', t.tbl
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      DETAIL = 'Changes to an unlogged table are not written to WAL, so they cannot be decoded.',
                      HINT = 'Unpublish it first with kappa.unpublish_table().';
        END IF;
    END LOOP;
END
$$;

CREATE EVENT TRIGGER kappa_check_published_tables ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION kappa.check_published_tables();

CREATE FUNCTION kappa.check_published_keys()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t regclass;
BEGIN
    IF NOT EXISTS (SELECT FROM kappa.published_tables) THEN
        RETURN;
    END IF;
    -- published tables (not dropped by this command) whose primary key this
    -- command dropped; dropping a partitioned table's key drops its
    -- partitions' too.  (Only this command's: a table published without one
    -- before 0.1.5 must not make every later DROP in the database fail.)
    FOR t IN
        SELECT p.relid FROM kappa.published_tables p
          JOIN pg_class c ON c.oid = p.relid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = p.relid AND i.indisprimary)
           AND NOT EXISTS (SELECT FROM pg_event_trigger_dropped_objects() d
                            WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0
                              AND d.objid = p.relid::oid)
           AND EXISTS (SELECT FROM pg_event_trigger_dropped_objects() d
                        WHERE d.object_type = 'table constraint'
                          AND d.address_names[1] = n.nspname
                          AND d.address_names[2] = c.relname)
    LOOP
        RAISE EXCEPTION 'table % is published to Kafka and must keep its primary key', t
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Kafka messages are keyed by the primary key.',
                  HINT = 'Unpublish it first with kappa.unpublish_table().';
    END LOOP;
END
$$;

CREATE EVENT TRIGGER kappa_check_published_keys ON sql_drop
    EXECUTE FUNCTION kappa.check_published_keys();

-- -------------------------------------------------------------------------
-- CDC: status
-- -------------------------------------------------------------------------

CREATE FUNCTION kappa.cdc_worker_status(
    OUT pid integer,
    OUT state text,
    OUT slot_name text,
    OUT decoded_lsn pg_lsn,
    OUT confirmed_lsn pg_lsn,
    OUT in_flight bigint,
    OUT produced bigint,
    OUT acknowledged bigint,
    OUT transactions bigint,
    OUT errors bigint,
    OUT retries bigint,
    OUT last_error text,
    OUT last_error_at timestamptz,
    OUT started_at timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'kappa_cdc_worker_status'
LANGUAGE C STABLE;

CREATE VIEW kappa.cdc_status AS
SELECT w.pid,
       w.state,
       w.slot_name,
       ARRAY(SELECT p.relid::text FROM kappa.published_tables p ORDER BY 1) AS tables,
       w.decoded_lsn,
       s.confirmed_flush_lsn AS confirmed_lsn,
       CASE WHEN s.confirmed_flush_lsn IS NOT NULL
            THEN pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(),
                                            s.confirmed_flush_lsn)::bigint
       END AS lag_bytes,
       CASE WHEN s.restart_lsn IS NOT NULL
            THEN pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(),
                                            s.restart_lsn)::bigint
       END AS retained_wal_bytes,
       w.in_flight,
       w.produced,
       w.acknowledged,
       w.transactions,
       w.errors,
       w.retries,
       w.last_error,
       w.last_error_at,
       w.started_at
  FROM kappa.cdc_worker_status() w
  LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = w.slot_name;

COMMENT ON VIEW kappa.cdc_status IS
    'The CDC publisher: state, slot positions, lag, messages in flight, errors';

-- -------------------------------------------------------------------------
-- Privileges: publishing is for table owners with REPLICATION (checked in
-- the functions); monitoring is for pg_monitor.
-- -------------------------------------------------------------------------
REVOKE ALL ON FUNCTION kappa.publish_table(regclass, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kappa.unpublish_table(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION kappa.cdc_worker_status() FROM PUBLIC;
REVOKE ALL ON kappa.cdc_status FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kappa.cdc_worker_status() TO pg_monitor;
GRANT SELECT ON kappa.cdc_status TO pg_monitor;
GRANT USAGE ON SCHEMA kappa TO PUBLIC;
GRANT SELECT ON kappa.published_tables TO pg_monitor;

