-- kappa.publish_table / kappa.unpublish_table: checks, the slot, the
-- initial snapshot and which changes follow.  The publisher worker is off
-- here (test/regress.conf), so the tests read its slot through SQL.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_kappa;	-- (also when run on its own)
RESET client_min_messages;
-- source.system_id must be this cluster's (pg_control_system() shows it
-- signed; the envelope unsigned, as pg_controldata does)
CREATE FUNCTION pg_temp.this_cluster() RETURNS text LANGUAGE sql AS $$
  SELECT '"system_id":"' || (system_identifier::numeric
           + CASE WHEN system_identifier < 0 THEN 18446744073709551616 ELSE 0 END) || '"'
    FROM pg_control_system()
$$;
CREATE FUNCTION pg_temp.stable(data text) RETURNS text LANGUAGE sql AS $$
  SELECT regexp_replace(regexp_replace(regexp_replace(replace(data, pg_temp.this_cluster(), '"system_id":"SYSID"'),
           '"lsn":"[0-9A-F]+/[0-9A-F]+"', '"lsn":"LSN"', 'g'),
           '"txid":[0-9]+', '"txid":XID', 'g'),
           '"ts_ms":[0-9]{13}', '"ts_ms":MS', 'g')
$$;

CREATE TABLE sales (
    sale_id bigint PRIMARY KEY, store_id text NOT NULL, seller_id text NOT NULL,
    seller_name text NOT NULL, city text NOT NULL, country char(2) NOT NULL,
    amount numeric(12,2) NOT NULL, currency char(3) NOT NULL DEFAULT 'EUR',
    sold_at timestamptz NOT NULL DEFAULT now());
INSERT INTO sales VALUES
  (1, 'MAD-01', 'S-17', 'Ana Ruiz', 'Madrid', 'ES', 10.00, 'EUR', '2026-11-20T09:00:00Z'),
  (2, 'BCN-02', 'S-22', 'Jordi Puig', 'Barcelona', 'ES', 20.00, 'EUR', '2026-11-20T10:00:00Z'),
  (3, 'LIS-01', 'S-31', 'João Sá', 'Lisboa', 'PT', 30.00, 'EUR', '2026-11-20T11:00:00Z');
CREATE TABLE not_published (id int PRIMARY KEY);

-- what cannot be published, and why
CREATE TABLE nopk (v int);
CREATE UNLOGGED TABLE unlogged_t (id int PRIMARY KEY);
CREATE TEMP TABLE temp_t (id int PRIMARY KEY);
CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
CREATE VIEW a_view AS SELECT 1 AS one;
CREATE TABLE ri_nothing (id int PRIMARY KEY);
ALTER TABLE ri_nothing REPLICA IDENTITY NOTHING;
SELECT kappa.publish_table('nopk');
SELECT kappa.publish_table('unlogged_t');
SELECT kappa.publish_table('temp_t');
SELECT kappa.publish_table('parted');
SELECT kappa.publish_table('a_view');
SELECT kappa.publish_table('ri_nothing');
SELECT kappa.publish_table('kappa.published_tables');
SELECT kappa.publish_table('pg_class');
SELECT kappa.publish_table('sales', 'no spaces allowed');
SELECT kappa.publish_table(NULL);
-- an oid of no table (0.1.5: a "(null)" table name, or an internal error)
SELECT kappa.publish_table(1::regclass);
SELECT kappa.unpublish_table(1::regclass);

-- who may publish: the table's owner, with REPLICATION
CREATE ROLE kappa_owner;
CREATE ROLE kappa_replicator REPLICATION;
ALTER TABLE not_published OWNER TO kappa_owner;
SET ROLE kappa_owner;
SELECT kappa.publish_table('not_published');
RESET ROLE;
GRANT EXECUTE ON FUNCTION kappa.publish_table(regclass, text) TO kappa_owner, kappa_replicator;
SET ROLE kappa_owner;
SELECT kappa.publish_table('not_published');
SET ROLE kappa_replicator;
SELECT kappa.publish_table('sales');
RESET ROLE;

-- the slot cannot be created after writes in the same transaction
BEGIN;
INSERT INTO not_published VALUES (1);
SELECT kappa.publish_table('sales');
ROLLBACK;

-- The first publish creates the slot and sends the existing rows ("r").
SELECT kappa.publish_table('sales');
SELECT slot_name, plugin, slot_type, database FROM pg_replication_slots;
SELECT relid, topic, published_by FROM kappa.published_tables;
SELECT kappa.publish_table('sales');
SELECT kappa.publish_table('sales', 'elsewhere');
-- following kappa.sales_topic is not the same as naming its topic
SELECT kappa.publish_table('sales', 'sales-events');

-- later changes of published tables follow the snapshot; others do not
INSERT INTO sales VALUES (4, 'MAD-01', 'S-17', 'Ana Ruiz', 'Madrid', 'ES', 40.00, 'EUR', '2026-11-21T09:00:00Z');
INSERT INTO not_published VALUES (2);
UPDATE sales SET amount = 11.00 WHERE sale_id = 1;
SELECT pg_temp.stable(data) FROM pg_logical_slot_get_changes('pg_kappa_cdc', NULL, NULL,
                                                             'published-only', 'on');

-- a second table, to its own topic, with REPLICA IDENTITY FULL: no notice
CREATE TABLE refunds (id int PRIMARY KEY, sale_id bigint, amount numeric(12,2));
ALTER TABLE refunds REPLICA IDENTITY FULL;
INSERT INTO refunds VALUES (1, 3, -5.00);
SELECT kappa.publish_table('refunds', 'refund-events');
SELECT relid, topic FROM kappa.published_tables ORDER BY relid::text;
INSERT INTO refunds VALUES (2, 2, -1.00);
SELECT pg_temp.stable(data) FROM pg_logical_slot_get_changes('pg_kappa_cdc', NULL, NULL,
                                                             'published-only', 'on');

-- unpublishing: changes committed afterwards are no longer sent
SELECT kappa.unpublish_table('refunds');
SELECT kappa.unpublish_table('refunds');
INSERT INTO refunds VALUES (3, 1, -2.00);
INSERT INTO sales VALUES (5, 'LIS-01', 'S-31', 'João Sá', 'Lisboa', 'PT', 50.00, 'EUR', '2026-11-21T10:00:00Z');
SELECT pg_temp.stable(data) FROM pg_logical_slot_get_changes('pg_kappa_cdc', NULL, NULL,
                                                             'published-only', 'on');

-- dropping a published table unpublishes it
SELECT kappa.publish_table('refunds');
DROP TABLE refunds;
SELECT relid FROM kappa.published_tables;

-- a published table keeps its primary key, a replica identity that carries
-- it, and its WAL; other changes, and the same changes to tables that are
-- not published, are allowed
ALTER TABLE sales REPLICA IDENTITY NOTHING;
ALTER TABLE sales DROP CONSTRAINT sales_pkey;
ALTER TABLE sales SET UNLOGGED;
CREATE UNIQUE INDEX sales_store_sale ON sales (store_id, sale_id);
ALTER TABLE sales REPLICA IDENTITY USING INDEX sales_store_sale;
ALTER TABLE sales REPLICA IDENTITY FULL;
ALTER TABLE sales REPLICA IDENTITY DEFAULT;
ALTER TABLE sales ADD COLUMN note text;
ALTER TABLE sales DROP COLUMN note;
DROP INDEX sales_store_sale;
ALTER TABLE not_published REPLICA IDENTITY NOTHING;
ALTER TABLE not_published REPLICA IDENTITY DEFAULT;
SELECT relreplident, relpersistence FROM pg_class WHERE oid = 'sales'::regclass;
-- a partition's key goes with its parent's: refused for a published partition
CREATE TABLE shipments (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE shipments_es PARTITION OF shipments FOR VALUES IN ('ES');
SELECT kappa.publish_table('shipments_es', 'shipment-events');
ALTER TABLE shipments DROP CONSTRAINT shipments_pkey;
SELECT count(*) FROM pg_index WHERE indrelid = 'shipments_es'::regclass AND indisprimary;
SELECT kappa.unpublish_table('shipments_es');
DROP TABLE shipments;
-- a restore of a dump: the published tables' rows come in the data, their
-- constraints after it, the primary key not necessarily first
CREATE TABLE restored (id int NOT NULL, code text NOT NULL);
INSERT INTO kappa.published_tables (relid) VALUES ('restored');
ALTER TABLE ONLY restored ADD CONSTRAINT restored_code_key UNIQUE (code);
ALTER TABLE ONLY restored ADD CONSTRAINT restored_pkey PRIMARY KEY (id);
DELETE FROM kappa.published_tables WHERE relid = 'restored'::regclass;
DROP TABLE restored;

-- the status view answers even when the publisher is switched off
SELECT slot_name, tables, in_flight, last_error FROM kappa.cdc_status;
SET ROLE kappa_owner;
SELECT state FROM kappa.cdc_status;
RESET ROLE;

-- published_by is the caller, not the extension's owner as whom
-- publish_table writes its catalog
CREATE ROLE kappa_pubowner REPLICATION;
CREATE TABLE owned_sales (id int PRIMARY KEY);
ALTER TABLE owned_sales OWNER TO kappa_pubowner;
GRANT EXECUTE ON FUNCTION kappa.publish_table(regclass, text), kappa.unpublish_table(regclass) TO kappa_pubowner;
SET ROLE kappa_pubowner;
SELECT kappa.publish_table('owned_sales', 'owned-events');
RESET ROLE;
SELECT relid, topic, published_by FROM kappa.published_tables WHERE relid = 'owned_sales'::regclass;
SET ROLE kappa_pubowner;
SELECT kappa.unpublish_table('owned_sales');
RESET ROLE;
-- such a role cannot publish into a topic read as payment confirmations or
-- as ranking results; a superuser can
SELECT (kappa.create_ranking('pub_results_check', ARRAY['city'], '1 day',
                             results_topic => 'city-results')).name;
SELECT (kappa.create_ranking('pub_sink_check', ARRAY['city'], '1 day',
                             input => 'results', source_topic => 'other-results')).name;
SET ROLE kappa_pubowner;
SELECT kappa.publish_table('owned_sales', 'payment-confirmations');
SELECT kappa.publish_table('owned_sales', 'top-salesman-by-country');
SELECT kappa.publish_table('owned_sales', 'city-results');
SELECT kappa.publish_table('owned_sales', 'other-results');
RESET ROLE;
SELECT relid FROM kappa.published_tables WHERE relid = 'owned_sales'::regclass;
SELECT kappa.publish_table('owned_sales', 'payment-confirmations') >= 0 AS published_by_superuser;
-- nor, once the slot is lost, have every published table's rows sent again
-- (one of them into the payments topic)
CREATE TABLE pub_mine (id int PRIMARY KEY);
ALTER TABLE pub_mine OWNER TO kappa_pubowner;
SET ROLE kappa_pubowner;
SELECT kappa.publish_table('pub_mine', 'mine-events') >= 0 AS published;
RESET ROLE;
SELECT pg_drop_replication_slot('pg_kappa_cdc');
SET client_min_messages = error;
SET ROLE kappa_pubowner;
SELECT kappa.publish_table('pub_mine', 'mine-events');
RESET ROLE;
SELECT count(*) AS slots FROM pg_replication_slots WHERE slot_name = 'pg_kappa_cdc';
SELECT kappa.publish_table('pub_mine', 'mine-events') >= 0 AS made_anew_by_superuser;
RESET client_min_messages;
SELECT count(*) AS slots FROM pg_replication_slots WHERE slot_name = 'pg_kappa_cdc';
-- a topic carrying a published table's changes is neither a ranking's
-- results topic nor a sink ranking's source
SELECT kappa.create_ranking('into_changes', ARRAY['city'], '1 day', results_topic => 'mine-events');
SELECT kappa.create_ranking('sink_of_changes', ARRAY['city'], '1 day', input => 'results',
                            source_topic => current_setting('kappa.sales_topic'));
SELECT kappa.unpublish_table('pub_mine');
DROP TABLE pub_mine;
SELECT kappa.unpublish_table('owned_sales');
SELECT kappa.drop_ranking('pub_results_check'), kappa.drop_ranking('pub_sink_check');
REVOKE EXECUTE ON FUNCTION kappa.publish_table(regclass, text), kappa.unpublish_table(regclass) FROM kappa_pubowner;
DROP TABLE owned_sales;
DROP ROLE kappa_pubowner;

SELECT kappa.unpublish_table('sales');
SELECT pg_drop_replication_slot('pg_kappa_cdc');
DROP TABLE sales, not_published, nopk, unlogged_t, temp_t, parted, ri_nothing CASCADE;
DROP VIEW a_view;
REVOKE EXECUTE ON FUNCTION kappa.publish_table(regclass, text) FROM kappa_owner, kappa_replicator;
DROP ROLE kappa_owner;
DROP ROLE kappa_replicator;

-- publishing happens in kappa.database only
CREATE DATABASE kappa_elsewhere;
\c kappa_elsewhere
CREATE EXTENSION pg_kappa;
CREATE TABLE t (id int PRIMARY KEY);
SELECT kappa.publish_table('t');
\c contrib_regression
DROP DATABASE kappa_elsewhere;
