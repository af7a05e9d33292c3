-- pg_kappa 0.1.4 -> 0.1.5
\echo Use "ALTER EXTENSION pg_kappa UPDATE TO '0.1.5'" to load this file. \quit

-- kappa.ranking() for a ranking with an item (top n items in each group,
-- e.g. kappa.top_salesmen_by_country() without a country) read and sorted
-- every item of the window; it now finds the window's groups one index
-- descent each and reads each group's top n from its index.  Same results,
-- same order; the function keeps its privileges (CREATE OR REPLACE).
--
-- New: event triggers refuse DDL that takes from a published table its
-- primary key, its replica identity DEFAULT or FULL, or its WAL (SET
-- UNLOGGED).
--
-- New: kappa.csv_files.moved_at, when a file's move was done, so that a file
-- put back into the inbox (to try a failed one again) is not taken for a
-- move a crash interrupted.  Existing rows with a destination are taken as
-- moved when they finished.
--
-- kappa.stream_rows_windows_end no longer asks autovacuum to summarise each
-- block range it fills (autosummarize): the forgetting pass summarises new
-- ranges itself, and at a few thousand sales a second the requests overran
-- autovacuum's work-item queue, one LOG line per request refused.

-- Ties rank by total, then sale count, then group values, then item: the
-- order is total and deterministic.
CREATE OR REPLACE FUNCTION kappa.ranking(name text, at timestamptz DEFAULT now(), n integer DEFAULT 10)
RETURNS TABLE (rank bigint, window_start timestamptz, window_end timestamptz,
               group_values text[], item text, item_label text,
               total numeric, sale_count bigint, is_final boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    w record;
    has_item boolean;
BEGIN
    IF n IS NULL OR n < 1 THEN
        RAISE EXCEPTION 'n must be at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO w FROM kappa.ranking_window(name, at);
    SELECT r.item IS NOT NULL INTO has_item FROM kappa.rankings r WHERE r.name = ranking.name;
    IF NOT has_item THEN
        RETURN QUERY
        SELECT row_number() OVER (ORDER BY x.total DESC, x.sale_count DESC, x.group_values),
               x.window_start, x.window_end, x.group_values, NULL::text, NULL::text,
               x.total, x.sale_count, x.is_final
          FROM (SELECT * FROM kappa.ranking_results res
                 WHERE res.ranking = ranking.name AND res.window_start = w.window_start
                 ORDER BY res.total DESC, res.sale_count DESC, res.group_values
                 LIMIT n) x;
    ELSE
        -- Top n items within each group.  The window's groups are found one
        -- primary key descent each (PostgreSQL 15 has no skip scan), then
        -- each group's top n is read from ranking_results_group_top: the
        -- cost follows groups * n, not the items in the window.
        RETURN QUERY
        WITH RECURSIVE grp(gv) AS (
            (SELECT res.group_values FROM kappa.ranking_results res
              WHERE res.ranking = ranking.name AND res.window_start = w.window_start
              ORDER BY res.group_values LIMIT 1)
            UNION ALL
            SELECT (SELECT res.group_values FROM kappa.ranking_results res
                     WHERE res.ranking = ranking.name AND res.window_start = w.window_start
                       AND res.group_values > grp.gv
                     ORDER BY res.group_values LIMIT 1)
              FROM grp
             WHERE grp.gv IS NOT NULL
        )
        SELECT x.rk, x.window_start, x.window_end, x.group_values, x.item, x.item_label,
               x.total, x.sale_count, x.is_final
          FROM grp
         CROSS JOIN LATERAL (
                SELECT t.*, row_number() OVER (ORDER BY t.total DESC, t.sale_count DESC, t.item) AS rk
                  FROM (SELECT * FROM kappa.ranking_results res
                         WHERE res.ranking = ranking.name AND res.window_start = w.window_start
                           AND res.group_values = grp.gv
                         ORDER BY res.total DESC, res.sale_count DESC, res.item
                         LIMIT n) t) x
         WHERE grp.gv IS NOT NULL
         ORDER BY x.group_values, x.rk;
    END IF;
END
$$;

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
    -- published tables (not dropped by this command) left without one;
    -- dropping a partitioned table's key drops its partitions' too
    FOR t IN
        SELECT p.relid FROM kappa.published_tables p
         WHERE NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = p.relid AND i.indisprimary)
           AND NOT EXISTS (SELECT FROM pg_event_trigger_dropped_objects() d
                            WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0
                              AND d.objid = p.relid::oid)
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

ALTER TABLE kappa.csv_files ADD COLUMN moved_at timestamptz;
UPDATE kappa.csv_files SET moved_at = finished_at WHERE moved_to IS NOT NULL;

ALTER INDEX kappa.stream_rows_windows_end SET (autosummarize = off);
