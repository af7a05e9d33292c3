-- Output plugin options and large transactions.
CREATE TABLE a_table (id int PRIMARY KEY, v text);
CREATE TABLE b_table (id int PRIMARY KEY, v text);
CREATE SCHEMA other;
CREATE TABLE other.a_table (id int PRIMARY KEY, v text);

SELECT 'init' FROM pg_create_logical_replication_slot('options_slot', 'pg_kappa');

INSERT INTO a_table VALUES (1, 'public a');
INSERT INTO b_table VALUES (1, 'public b');
INSERT INTO other.a_table VALUES (1, 'other a');

-- table patterns: schema.table, with * for any schema or table
SELECT data FROM pg_logical_slot_peek_changes('options_slot', NULL, NULL,
    'format', 'text', 'tables', 'public.a_table');
SELECT data FROM pg_logical_slot_peek_changes('options_slot', NULL, NULL,
    'format', 'text', 'tables', '*.a_table');
SELECT data FROM pg_logical_slot_peek_changes('options_slot', NULL, NULL,
    'format', 'text', 'tables', 'public.*, "other".a_table');
-- a transaction with nothing included produces nothing, not even markers
SELECT count(*) FROM pg_logical_slot_peek_changes('options_slot', NULL, NULL,
    'tables', 'nowhere.*', 'include-transaction', 'on');

-- bad options
SELECT * FROM pg_logical_slot_peek_changes('options_slot', NULL, NULL, 'format', 'xml');
SELECT * FROM pg_logical_slot_peek_changes('options_slot', NULL, NULL, 'tables', 'no_schema');
SELECT * FROM pg_logical_slot_peek_changes('options_slot', NULL, NULL, 'include-transaction', 'perhaps');
SELECT * FROM pg_logical_slot_peek_changes('options_slot', NULL, NULL, 'colour', 'blue');
SELECT 'consumed' FROM pg_logical_slot_get_changes('options_slot', NULL, NULL) LIMIT 1;

-- A transaction much larger than logical_decoding_work_mem (64kB here)
-- spills to disk and still comes out whole and in order.
INSERT INTO a_table SELECT i, repeat('x', 100) || i FROM generate_series(2, 20001) i;
SELECT count(*) AS messages,
       min((data::jsonb #>> '{source,seq}')::int) AS first_seq,
       max((data::jsonb #>> '{source,seq}')::int) AS last_seq,
       bool_and((data::jsonb #>> '{after,id}')::int = (data::jsonb #>> '{source,seq}')::int + 2) AS in_order
  FROM pg_logical_slot_get_changes('options_slot', NULL, NULL);
SELECT spill_txns > 0 AS spilled FROM pg_stat_replication_slots WHERE slot_name = 'options_slot';

SELECT pg_drop_replication_slot('options_slot');
DROP TABLE a_table, b_table, other.a_table;
DROP SCHEMA other;
