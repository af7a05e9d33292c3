-- Upgrade scripts: install each released version, update it to the current
-- one, and compare the catalog with a fresh install of the current version.
-- (an ICU collation: its text does not sort as bytes, so a key column left
-- in the database's collation would show in the order of the keys below)
CREATE DATABASE kappa_upgrade TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C.UTF-8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US';
\c kappa_upgrade

-- Is the object a relation or function of schema kappa, or the schema?
CREATE FUNCTION in_kappa(classid oid, objid oid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT (classid = 'pg_class'::regclass
            AND objid IN (SELECT oid FROM pg_class WHERE relnamespace = to_regnamespace('kappa')))
        OR (classid = 'pg_proc'::regclass
            AND objid IN (SELECT oid FROM pg_proc WHERE pronamespace = to_regnamespace('kappa')))
        OR (classid = 'pg_namespace'::regclass AND objid = to_regnamespace('kappa'))
$$;

-- What the extension consists of, by name and definition.
CREATE FUNCTION extension_catalog()
RETURNS TABLE (kind text, name text, definition text)
LANGUAGE sql AS $$
    SELECT 'member', pg_describe_object(d.classid, d.objid, d.objsubid), NULL
      FROM pg_depend d JOIN pg_extension e ON d.refobjid = e.oid
     WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'pg_kappa'
    UNION ALL
    SELECT 'column', c.relname || '.' || a.attnum,
           a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
           || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
           || coalesce(' DEFAULT ' || pg_get_expr(ad.adbin, ad.adrelid), '')
           || coalesce(' ' || nullif(a.attidentity::text, ''), '') || coalesce(' ' || nullif(a.attgenerated::text, ''), '')
           || coalesce(' COLLATE ' || nullif(a.attcollation, 0)::regcollation::text, '')
           || coalesce(' ' || a.attacl::text, '')
      FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
     WHERE c.relnamespace = to_regnamespace('kappa')
    UNION ALL
    SELECT 'relation', c.relname, c.relkind::text || ' ' || coalesce(c.relacl::text, '')
           || coalesce(' ' || c.reloptions::text, '')
      FROM pg_class c WHERE c.relnamespace = to_regnamespace('kappa')
    UNION ALL
    SELECT 'index', c.relname, pg_get_indexdef(c.oid)
      FROM pg_class c WHERE c.relnamespace = to_regnamespace('kappa') AND c.relkind = 'i'
    UNION ALL
    SELECT 'constraint', c.conrelid::regclass || '.' || c.conname, pg_get_constraintdef(c.oid)
      FROM pg_constraint c WHERE c.connamespace = to_regnamespace('kappa')
    UNION ALL
    SELECT 'view', c.relname, pg_get_viewdef(c.oid)
      FROM pg_class c WHERE c.relnamespace = to_regnamespace('kappa') AND c.relkind IN ('v', 'm')
    UNION ALL
    SELECT 'function', p.oid::regprocedure::text,
           pg_get_functiondef(p.oid) || coalesce(p.proacl::text, '')
      FROM pg_proc p WHERE p.pronamespace = to_regnamespace('kappa') AND p.prokind IN ('f', 'p')
    UNION ALL
    SELECT 'trigger', t.tgrelid::regclass || '.' || t.tgname, pg_get_triggerdef(t.oid)
      FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
     WHERE c.relnamespace = to_regnamespace('kappa') AND NOT t.tgisinternal
    UNION ALL
    -- (in any order: an update can only add at the end)
    SELECT 'dumped', c.tbl::regclass::text, c.cond
      FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS c(tbl, cond)
     WHERE e.extname = 'pg_kappa'
    UNION ALL
    SELECT 'comment', pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description
      FROM pg_description d
     WHERE in_kappa(d.classoid, d.objoid)
    UNION ALL
    SELECT 'event trigger', t.evtname,
           t.evtevent || ' ' || coalesce(t.evttags::text, '') || ' ' || t.evtfoid::regproc || ' ' || t.evtenabled::text
      FROM pg_event_trigger t
     WHERE t.oid IN (SELECT objid FROM pg_depend WHERE classid = 'pg_event_trigger'::regclass
                       AND refclassid = 'pg_extension'::regclass AND deptype = 'e')
    UNION ALL
    SELECT 'schema', n.nspname, coalesce(n.nspacl::text, '')
      FROM pg_namespace n WHERE n.nspname = 'kappa'
    UNION ALL
    SELECT 'initial privileges', pg_describe_object(i.classoid, i.objoid, i.objsubid),
           i.privtype::text || ' ' || i.initprivs::text
      FROM pg_init_privs i
     WHERE in_kappa(i.classoid, i.objoid)
$$;

-- 0.1.0, with rows the stream worker remembered under it
CREATE EXTENSION pg_kappa VERSION '0.1.0';
INSERT INTO kappa.stream_rows (topic, key, row_data, counted, deleted) VALUES
    ('sales-events', '1', '{"sale_id":"1","city":"Madrid","sold_at":"2026-11-20T10:00:00Z"}', '{1,2}', false),
    ('sales-events', '2', '{"sale_id":"2","city":"Lisboa","sold_at":"2026-12-31T23:59:59.999999Z"}', '{1,2}', false),
    ('sales-events', '3', NULL, '{}', true),
    ('sales-events', '4', '{"sale_id":"4","sold_at":"not a time"}', '{}', false),
    ('other-topic', '1', '{"sale_id":"1","sold_at":"2026-11-20T10:00:00Z"}', '{}', false);

ALTER EXTENSION pg_kappa UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'pg_kappa';

-- windows_end filled in: the later of the day window and the 30-day window
SET TimeZone = 'UTC';
SELECT topic, key, windows_end FROM kappa.stream_rows ORDER BY topic, key;

CREATE TEMP TABLE upgraded AS SELECT * FROM extension_catalog();
DROP EXTENSION pg_kappa;
CREATE EXTENSION pg_kappa;
CREATE TEMP TABLE fresh AS SELECT * FROM extension_catalog();

SELECT count(*) > 100 AS compared FROM fresh;
-- what differs, each way (each update step below refills "upgraded")
CREATE TEMP VIEW catalog_differences AS
(SELECT 'only after update' AS side, * FROM upgraded EXCEPT SELECT 'only after update', * FROM fresh)
UNION ALL
(SELECT 'only in fresh install', * FROM fresh EXCEPT SELECT 'only in fresh install', * FROM upgraded);
-- none
SELECT * FROM catalog_differences ORDER BY 1, 2, 3;

-- 0.1.1 with a ranking of its own, updated: the same catalog again
DROP EXTENSION pg_kappa;
CREATE EXTENSION pg_kappa VERSION '0.1.1';
SELECT name FROM kappa.create_ranking('by_store', ARRAY['store_id'], interval '1 hour');
ALTER EXTENSION pg_kappa UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'pg_kappa';
SELECT name, row_memory FROM kappa.ranking_definitions ORDER BY name;
TRUNCATE upgraded;
INSERT INTO upgraded SELECT * FROM extension_catalog();
SELECT * FROM catalog_differences ORDER BY 1, 2, 3;

-- 0.1.2 with remembered rows, updated: the rows kept, the catalog the same
DROP EXTENSION pg_kappa;
CREATE EXTENSION pg_kappa VERSION '0.1.2';
INSERT INTO kappa.stream_rows (topic, key, row_data, counted) VALUES
    ('sales-events', '7', '{"sale_id":"7"}', '{1}'), ('other-topic', '7', '{"sale_id":"7"}', '{}');
ALTER EXTENSION pg_kappa UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'pg_kappa';
SELECT key, topic FROM kappa.stream_rows ORDER BY key, topic;
SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'stream_rows_pkey';
TRUNCATE upgraded;
INSERT INTO upgraded SELECT * FROM extension_catalog();
SELECT * FROM catalog_differences ORDER BY 1, 2, 3;

-- 0.1.3 with remembered rows and payments, updated: keys compare as bytes
-- (in a database whose collation does not), the rows kept, the catalog the same
DROP EXTENSION pg_kappa;
CREATE EXTENSION pg_kappa VERSION '0.1.3';
INSERT INTO kappa.stream_rows (topic, key, row_data, counted) VALUES
    ('sales-events', 'b', '{"sale_id":"b"}', '{1}'), ('sales-events', 'B', '{"sale_id":"B"}', '{1}'),
    ('sales-events', '10', '{"sale_id":"10"}', '{1}'), ('sales-events', '9', '{"sale_id":"9"}', '{1}');
INSERT INTO kappa.payments (sale_id, payment_id, status, confirmed_at)
    VALUES ('b', 'P-1', 'CONFIRMED', '2026-11-21 10:00:00+00');
INSERT INTO kappa.payment_history (payment_id, status, sale_id, confirmed_at)
    VALUES ('P-1', 'CONFIRMED', 'b', '2026-11-21 10:00:00+00');
ALTER EXTENSION pg_kappa UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'pg_kappa';
SELECT c.relname, a.attname, a.attcollation::regcollation
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
 WHERE c.relnamespace = 'kappa'::regnamespace AND a.attcollation = 'pg_catalog."C"'::regcollation
 ORDER BY 1, 2;
SELECT sale_id, payment_status, payment_id FROM kappa.sales_enriched ORDER BY sale_id;
TRUNCATE upgraded;
INSERT INTO upgraded SELECT * FROM extension_catalog();
SELECT * FROM catalog_differences ORDER BY 1, 2, 3;

-- 0.1.4 with results of a ranking with items, updated: the same top n in
-- each group, in the same order, and the catalog the same
DROP EXTENSION pg_kappa;
CREATE EXTENSION pg_kappa VERSION '0.1.4';
INSERT INTO kappa.ranking_windows (ranking, window_start, window_end)
    VALUES ('top_salesman_by_country', '2026-11-03 00:00+00', '2026-12-03 00:00+00');
INSERT INTO kappa.ranking_results (ranking, window_start, window_end, group_values, item, item_label, total, sale_count)
SELECT 'top_salesman_by_country', '2026-11-03 00:00+00', '2026-12-03 00:00+00',
       ARRAY[(ARRAY['ES', 'PT', 'FR'])[1 + i % 3]], 'S-' || i, 'Seller ' || i, (i % 4) * 2.5, 1 + i % 3
  FROM generate_series(1, 40) i;
CREATE TEMP TABLE top_before AS
SELECT * FROM kappa.top_salesmen_by_country(at => '2026-11-21 12:00+00', n => 3) WITH ORDINALITY;
-- and a table published without a primary key, which 0.1.4 let one drop
CREATE TABLE keyless (id int PRIMARY KEY);
INSERT INTO kappa.published_tables (relid) VALUES ('keyless'::regclass);
ALTER TABLE keyless DROP CONSTRAINT keyless_pkey;
-- and CSV files: one moved, one still processing
INSERT INTO kappa.csv_files (name, sha256, size, state, finished_at, moved_to) VALUES
    ('sales_a.csv', repeat('a', 64), 10, 'processed', '2026-11-21 10:00+00', 'processed/sales_a.csv'),
    ('sales_b.csv', repeat('b', 64), 10, 'processing', NULL, NULL);
-- and a fixed ranking with a zone PostgreSQL does not know, as 0.1.4's
-- library stored it (a fixed window does not use it; this library refuses
-- it at create_ranking, so it is set afterwards)
SELECT name FROM kappa.create_ranking('fixed_bad_zone', ARRAY['city'], '1 day', calendar => false);
UPDATE kappa.rankings SET time_zone = 'Nowhere/Atlantis' WHERE name = 'fixed_bad_zone';
-- the keyless table is refused, and taken once it has its key again
ALTER EXTENSION pg_kappa UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'pg_kappa';
ALTER TABLE keyless ADD PRIMARY KEY (id);
-- so is one without replica identity DEFAULT or FULL, or unlogged
ALTER TABLE keyless REPLICA IDENTITY NOTHING;
ALTER EXTENSION pg_kappa UPDATE;
ALTER TABLE keyless REPLICA IDENTITY DEFAULT, SET UNLOGGED;
ALTER EXTENSION pg_kappa UPDATE;
ALTER TABLE keyless SET LOGGED;
-- a schema another role owns, or may create in, is refused too (0.1.4 took
-- a schema kappa made beforehand), and taken once a superuser's alone
CREATE ROLE kappa_upgrade_squatter;
GRANT CREATE ON SCHEMA kappa TO kappa_upgrade_squatter;
-- (exact matches for "oid = regclass" and "oid <> regclass", which
-- pg_catalog has only through a cast: the checks must not call them)
SET ROLE kappa_upgrade_squatter;
CREATE FUNCTION kappa.planted(oid, regclass) RETURNS boolean LANGUAGE plpgsql
    AS $$BEGIN RAISE EXCEPTION 'planted operator called by %', current_user; END$$;
CREATE OPERATOR kappa.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = kappa.planted);
CREATE OPERATOR kappa.<> (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = kappa.planted);
RESET ROLE;
ALTER EXTENSION pg_kappa UPDATE;
REVOKE CREATE ON SCHEMA kappa FROM kappa_upgrade_squatter;
-- what it planted is refused, not called
ALTER EXTENSION pg_kappa UPDATE;
DROP FUNCTION kappa.planted(oid, regclass) CASCADE;
GRANT CREATE ON SCHEMA kappa TO PUBLIC;
ALTER EXTENSION pg_kappa UPDATE;
REVOKE CREATE ON SCHEMA kappa FROM PUBLIC;
ALTER SCHEMA kappa OWNER TO kappa_upgrade_squatter;
ALTER EXTENSION pg_kappa UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'pg_kappa';
ALTER SCHEMA kappa OWNER TO CURRENT_USER;
DROP ROLE kappa_upgrade_squatter;
ALTER EXTENSION pg_kappa UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'pg_kappa';
SELECT * FROM kappa.ranking_window('fixed_bad_zone', '2026-11-21 12:00+00');
SELECT kappa.drop_ranking('fixed_bad_zone');
-- moved_at: the finished move taken as done when it finished, the other not
SELECT name, state, moved_at FROM kappa.csv_files ORDER BY name;
-- other DROPs in the database go on (a CHECK of a published table's, too);
-- dropping the key of a published table does not
CREATE TABLE unrelated (id int);
DROP TABLE unrelated;
ALTER TABLE keyless ADD CONSTRAINT positive CHECK (id > 0);
ALTER TABLE keyless DROP CONSTRAINT positive;
CREATE TABLE keyed (id int PRIMARY KEY);
INSERT INTO kappa.published_tables (relid) VALUES ('keyed'::regclass);
\set VERBOSITY terse
ALTER TABLE keyed DROP CONSTRAINT keyed_pkey;
\set VERBOSITY default
DELETE FROM kappa.published_tables;
DROP TABLE keyless, keyed;
-- the forgetting pass summarises the BRIN index; autovacuum is not asked to
SELECT reloptions FROM pg_class WHERE oid = 'kappa.stream_rows_windows_end'::regclass;
SELECT count(*) AS rows,
       array_agg(b::text ORDER BY b.ordinality)
       = (SELECT array_agg(a::text ORDER BY a.ordinality)
            FROM kappa.top_salesmen_by_country(at => '2026-11-21 12:00+00', n => 3) WITH ORDINALITY a) AS same
  FROM top_before b;
TRUNCATE upgraded;
INSERT INTO upgraded SELECT * FROM extension_catalog();
SELECT * FROM catalog_differences ORDER BY 1, 2, 3;

\c contrib_regression
DROP DATABASE kappa_upgrade;
