-- pg_kappa 0.1.4 -> 0.1.5
\echo Use "ALTER EXTENSION pg_kappa UPDATE TO '0.1.5'" to load this file. \quit

-- Refused here, before anything changes:
--  - a schema "kappa" another role owns or may create objects in, which
--    CREATE EXTENSION refuses since 0.1.5: this script and the workers run
--    as a superuser on what the schema holds, so such a role could have
--    planted functions, operators or triggers they would run; and so an
--    object in the schema that is not the extension's (all checked
--    first, and with oids compared with oids only: "oid = regclass" would
--    take an exactly matching kappa.=(oid, regclass) over pg_catalog's,
--    which needs a cast);
--  - a published table without a primary key, or with a replica identity
--    other than DEFAULT or FULL, or unlogged: 0.1.4 let DDL take these
--    from a published table; from 0.1.5 event triggers refuse that DDL,
--    and the table's messages need them.
DO $$
DECLARE
    nsp oid;
    t regclass;
    why text;
    who text;
BEGIN
    SELECT e.extnamespace INTO nsp FROM pg_catalog.pg_extension e
     WHERE e.extname = 'pg_kappa'::pg_catalog.name;
    SELECT r.rolname INTO who FROM pg_catalog.pg_namespace n
      JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
     WHERE n.oid = nsp AND NOT r.rolsuper;
    IF who IS NOT NULL THEN
        RAISE EXCEPTION 'schema "kappa" is not a superuser''s alone'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = pg_catalog.format('Role %I owns it; the pg_kappa workers and this update run as a superuser on the objects in it.', who),
                  HINT = 'Make a superuser its owner (ALTER SCHEMA kappa OWNER TO a superuser), check the objects in it, then update again.';
    END IF;
    SELECT coalesce(pg_catalog.quote_ident(r.rolname), 'PUBLIC') INTO who
      FROM pg_catalog.pg_namespace n,
           pg_catalog.aclexplode(n.nspacl) a
      LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
     WHERE n.oid = nsp
       AND a.privilege_type = 'CREATE'::pg_catalog.text
       AND (r.rolsuper IS NULL OR NOT r.rolsuper)
     ORDER BY 1 LIMIT 1;
    IF who IS NOT NULL THEN
        RAISE EXCEPTION 'schema "kappa" is not a superuser''s alone'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = pg_catalog.format('Role %s may create objects in it; the pg_kappa workers and this update run as a superuser on the objects in it.', who),
                  HINT = 'Revoke CREATE on schema kappa from every role but superusers, check the objects in it, then update again.';
    END IF;
    -- (what such a role made there before stays; every object in the
    -- schema is the extension's, as CREATE EXTENSION found it empty)
    SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) INTO who
      FROM pg_catalog.pg_depend d
     WHERE d.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass::pg_catalog.oid
       AND d.refobjid = nsp
       AND d.classid <> 'pg_catalog.pg_extension'::pg_catalog.regclass::pg_catalog.oid
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend e
                        WHERE e.classid = d.classid AND e.objid = d.objid
                          AND e.deptype = 'e'::pg_catalog."char")
     ORDER BY 1 LIMIT 1;
    IF who IS NOT NULL THEN
        RAISE EXCEPTION 'schema "kappa" holds objects that are not pg_kappa''s'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = pg_catalog.format('%s is in schema kappa; the pg_kappa workers and this update run as a superuser on the objects in it.', who),
                  HINT = 'Drop it or move it to another schema (ALTER ... SET SCHEMA), then update again.';
    END IF;

    SELECT p.relid,
           CASE WHEN NOT EXISTS (SELECT FROM pg_catalog.pg_index i
                                  WHERE i.indrelid = p.relid::pg_catalog.oid AND i.indisprimary)
                THEN 'has no primary key'
                WHEN c.relreplident <> ALL ('{d,f}'::pg_catalog."char"[])
                THEN 'has a replica identity other than DEFAULT or FULL'
                ELSE 'is unlogged' END
      INTO t, why
      FROM kappa.published_tables p
      JOIN pg_catalog.pg_class c ON c.oid = p.relid::pg_catalog.oid
     WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_index i
                        WHERE i.indrelid = p.relid::pg_catalog.oid AND i.indisprimary)
        OR c.relreplident <> ALL ('{d,f}'::pg_catalog."char"[])
        OR c.relpersistence <> 'p'::pg_catalog."char"
     ORDER BY p.relid::pg_catalog.oid LIMIT 1;
    IF t IS NOT NULL THEN
        RAISE EXCEPTION 'table % is published to Kafka and %', t, why
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Kafka messages are keyed by the primary key, deletes and updates of the key must carry it, and changes must reach WAL; pg_kappa 0.1.5 keeps published tables from losing any of these.',
                  HINT = 'Give the table back its primary key, replica identity DEFAULT or FULL and WAL (ALTER TABLE ... SET LOGGED), or unpublish it with kappa.unpublish_table(), then update again.';
    END IF;
END
$$;

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
-- kappa.create_ranking() refuses results_topic for a sink ranking
-- (input => 'results'), which never produced any.
-- It also refuses a results_topic, or a sink ranking's source topic, that a
-- table is published into: the topic carries that table's changes.
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

ALTER TABLE kappa.csv_files ADD COLUMN moved_at timestamptz;
UPDATE kappa.csv_files SET moved_at = finished_at WHERE moved_to IS NOT NULL;

ALTER INDEX kappa.stream_rows_windows_end SET (autosummarize = off);

CREATE OR REPLACE FUNCTION kappa.create_ranking(
    name text,
    group_by text[],
    window_size interval,
    measure text DEFAULT 'sum',
    measure_field text DEFAULT 'amount',
    item text DEFAULT NULL,
    item_label text DEFAULT NULL,
    calendar boolean DEFAULT NULL,
    window_origin timestamptz DEFAULT NULL,
    time_zone text DEFAULT NULL,
    grace interval DEFAULT NULL,
    confirmed_only boolean DEFAULT false,
    source_topic text DEFAULT NULL,
    results_topic text DEFAULT NULL,
    event_time_field text DEFAULT 'sold_at',
    input text DEFAULT 'events',
    row_memory boolean DEFAULT true)
RETURNS kappa.rankings
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r kappa.rankings;
    field text;
    cal boolean := coalesce(calendar,
                            extract(year FROM window_size) * 12 + extract(month FROM window_size) <> 0);
    zone text := coalesce(time_zone, current_setting('kappa.window_time_zone'));
    topic text := coalesce(source_topic, current_setting('kappa.sales_topic'));
    other kappa.rankings;
BEGIN
    IF name IS NULL OR name !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'invalid ranking name "%"', name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A ranking name starts with a lower-case letter and has at most 63 lower-case letters, digits and underscores.';
    END IF;
    IF EXISTS (SELECT FROM kappa.rankings x WHERE x.name = create_ranking.name) THEN
        RAISE EXCEPTION 'ranking "%" already exists', name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Drop it first with kappa.drop_ranking().';
    END IF;
    IF group_by IS NULL OR cardinality(group_by) NOT BETWEEN 1 AND 8 THEN
        RAISE EXCEPTION 'a ranking groups by 1 to 8 fields'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF array_ndims(group_by) <> 1 OR array_position(group_by, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'group_by must be a one-dimensional array of field names without nulls'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF event_time_field IS NULL THEN
        RAISE EXCEPTION 'event_time_field must not be null'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'Windows are of event time, read from this field of the event''s row.';
    END IF;
    IF confirmed_only IS NULL THEN
        RAISE EXCEPTION 'confirmed_only must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    FOREACH field IN ARRAY group_by || ARRAY[item, item_label, measure_field, event_time_field] LOOP
        IF field IS NOT NULL AND field !~ '^[A-Za-z_][A-Za-z0-9_]{0,62}$' THEN
            RAISE EXCEPTION 'invalid field name "%"', field
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'Fields name members of the event''s row ("after"), such as city or seller_id.';
        END IF;
    END LOOP;
    IF item_label IS NOT NULL AND item IS NULL THEN
        RAISE EXCEPTION 'item_label needs an item'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF measure IS NULL OR measure NOT IN ('sum', 'count') THEN
        RAISE EXCEPTION 'invalid measure "%"', measure
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''sum'' (of measure_field) or ''count''.';
    END IF;
    IF measure = 'sum' AND measure_field IS NULL THEN
        RAISE EXCEPTION 'a sum needs a measure_field'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF window_size IS NULL THEN
        RAISE EXCEPTION 'window_size must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- raises "invalid window" with the reason
    PERFORM kappa.window_bounds(now(), window_size, cal, window_origin, zone);
    IF grace < interval '0' THEN
        RAISE EXCEPTION 'grace must not be negative'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF input IS NULL OR input NOT IN ('events', 'results') THEN
        RAISE EXCEPTION 'invalid input "%"', input
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''events'' (change envelopes) or ''results'' (window results of another processor).';
    END IF;
    IF input = 'results' AND source_topic IS NULL THEN
        RAISE EXCEPTION 'a ranking fed by window results needs a source_topic'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF input = 'results' AND confirmed_only THEN
        RAISE EXCEPTION 'confirmed_only applies to rankings fed by events'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF row_memory IS NULL THEN
        RAISE EXCEPTION 'row_memory must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT row_memory AND input = 'results' THEN
        RAISE EXCEPTION 'row_memory applies to rankings fed by events'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF results_topic IS NOT NULL AND input = 'results' THEN
        RAISE EXCEPTION 'results_topic applies to rankings fed by events'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A sink ranking keeps the results other processors produced and produces none itself.';
    END IF;
    IF NOT row_memory AND confirmed_only THEN
        RAISE EXCEPTION 'a confirmed_only ranking needs row memory'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A payment confirmation that arrives after its sale counts the sale then, from the remembered row.';
    END IF;
    -- the rankings of one topic share its row memory, or all go without
    IF input = 'events' THEN
        SELECT x.* INTO other FROM kappa.rankings x
         WHERE x.input = 'events' AND x.row_memory <> create_ranking.row_memory
           AND coalesce(x.source_topic, current_setting('kappa.sales_topic')) = topic
         ORDER BY x.name LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'ranking "%" on topic "%" has row_memory = %', other.name, topic, other.row_memory::text
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'All rankings fed by one topic either remember its rows or all go without.',
                      HINT = format('Create the ranking with row_memory => %s, or drop the rankings of the topic first.', other.row_memory::text);
        END IF;
    END IF;
    FOREACH field IN ARRAY ARRAY[source_topic, results_topic] LOOP
        IF field IS NOT NULL AND field !~ '^[A-Za-z0-9._-]{1,249}$' THEN
            RAISE EXCEPTION 'invalid Kafka topic name "%"', field
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'A topic name has 1 to 249 ASCII letters, digits, ".", "_" and "-".';
        END IF;
    END LOOP;
    -- a topic a table is published into carries its changes: results are
    -- neither produced into it nor read from it (0.1.5)
    SELECT p.relid::regclass::text INTO field FROM kappa.published_tables p
     WHERE coalesce(p.topic, current_setting('kappa.sales_topic'))
           IN (create_ranking.results_topic,
               CASE WHEN create_ranking.input = 'results' THEN create_ranking.source_topic END)
     ORDER BY p.relid LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'table % is published into topic "%"', field,
                        coalesce(create_ranking.results_topic, create_ranking.source_topic)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = CASE WHEN create_ranking.input = 'results'
                                THEN 'A sink ranking reads other processors'' results from its source topic, not changes.'
                                ELSE 'A ranking produces its results into results_topic, which must not carry changes.' END,
                  HINT = 'Choose another topic.';
    END IF;

    INSERT INTO kappa.rankings (name, input, source_topic, group_by, item, item_label,
                                measure, measure_field, event_time_field, window_size,
                                calendar, window_origin, time_zone, grace, confirmed_only,
                                results_topic, row_memory)
    VALUES (name, input, source_topic, group_by, item, item_label, measure,
            CASE WHEN measure = 'sum' THEN measure_field END, event_time_field,
            window_size, cal, window_origin, zone, grace, confirmed_only, results_topic,
            row_memory)
    RETURNING * INTO r;
    INSERT INTO kappa.ranking_state (ranking) VALUES (r.name);
    RETURN r;
END
$$;

-- A fixed window's zone is not used: one stored before 0.1.5, when
-- create_ranking did not check it, must not make ranking_window fail.
CREATE OR REPLACE FUNCTION kappa.ranking_window(
    ranking text,
    ts timestamptz DEFAULT now(),
    OUT window_start timestamptz,
    OUT window_end timestamptz)
RETURNS record
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r kappa.rankings;
BEGIN
    SELECT * INTO r FROM kappa.rankings WHERE name = ranking;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ranking "%" does not exist', ranking
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT name FROM kappa.rankings lists them.';
    END IF;
    -- (a fixed window's zone is not used, and one stored before 0.1.5
    -- was not checked)
    SELECT b.window_start, b.window_end INTO window_start, window_end
      FROM kappa.window_bounds(ts, r.window_size, r.calendar, r.window_origin,
                               CASE WHEN r.calendar THEN r.time_zone END) b;
END
$$;

-- pg_dump kept the rankings made with create_ranking() but not where their
-- ids were: after a restore the next one took the id of a restored one and
-- failed.  (The state of a restored ranking, not dumped, is rebuilt from
-- its topic; since 0.1.5 the stream workers give it the row it needs.)
SELECT pg_catalog.pg_extension_config_dump('kappa.rankings_id_seq', '');

-- kappa.csv_files.duplicate_of referred to its own table: every pg_dump
-- warned of circular foreign keys and of restores that might need
-- --disable-triggers.  No longer a foreign key.
ALTER TABLE kappa.csv_files DROP CONSTRAINT csv_files_duplicate_of_fkey;

-- kappa.sales_enriched.sale was the whole row as it came, every column of
-- the published table: kappa_reader read columns of the source table it
-- was never granted.  It holds the reference sale's columns now; the whole
-- row stays in kappa.stream_rows.
CREATE OR REPLACE VIEW kappa.sales_enriched AS
SELECT s.key AS sale_id, s.topic,
       (SELECT pg_catalog.jsonb_object_agg(c.key, c.value)
          FROM pg_catalog.jsonb_each(s.row_data::jsonb) c
         WHERE c.key = ANY ('{sale_id,store_id,seller_id,seller_name,city,country,amount,currency,sold_at}'::text[])) AS sale,
       coalesce(p.status, 'PENDING') AS payment_status, p.payment_id, p.confirmed_at
  FROM kappa.stream_rows s
  LEFT JOIN kappa.payments p ON p.sale_id = s.key
 WHERE NOT s.deleted;

-- kappa.dead_letters.raw is the record as it came (a whole row of a
-- published table, a CSV line, a SOAP confirmation): pg_monitor read it.
-- pg_monitor, and now kappa_admin, read every column but raw.
REVOKE SELECT ON kappa.dead_letters FROM pg_monitor;
GRANT SELECT (id, source, topic, partition, "offset", file, line, error, received_at)
    ON kappa.dead_letters TO pg_monitor, kappa_admin;

-- kappa.stat_consumers.lag stayed at 1 for every partition a transactional
-- producer writes (Kafka Streams or Kafka Connect exactly-once, Debezium):
-- its commit markers take offsets no message has.  A partition caught up
-- (the stream workers' fetch position steps over markers) has no lag.
CREATE OR REPLACE VIEW kappa.stat_consumers AS
SELECT o.consumer_group, o.topic, o.partition, w.worker, o.owner_pid AS pid,
       coalesce(w.state, 'not running') AS state,
       o.next_offset, o.high_watermark,
       CASE WHEN o.caught_up THEN 0::bigint
            WHEN o.next_offset >= 0 AND o.high_watermark IS NOT NULL
            THEN greatest(o.high_watermark - o.next_offset, 0) END AS lag,
       o.stream_time, o.last_record_at, o.caught_up,
       w.messages, w.events_applied, w.duplicates, w.late_events, w.dead_letters,
       w.last_batch_at, w.last_error, w.last_error_at
  FROM kappa.stream_offsets o
  LEFT JOIN kappa.stream_worker_status() w ON w.pid = o.owner_pid;

-- A CDC position names the cluster and timeline whose WAL it is in
-- (source.system_id, source.timeline): a cluster restored from a dump, or a
-- standby promoted after an asynchronous failover, writes again at
-- positions the old one published, and its changes were taken for replays.
-- Rows and partitions remembered by 0.1.4 have none and keep comparing by
-- LSN alone against envelopes without them.
ALTER TABLE kappa.stream_rows ADD COLUMN system_id bigint, ADD COLUMN timeline integer;
ALTER TABLE kappa.stream_offsets
    ADD COLUMN position_system_id bigint, ADD COLUMN position_timeline integer;
