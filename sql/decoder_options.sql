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

-- Messages of the snapshot prefix that kappa.publish_table() did not write
-- are ignored with a warning (once per transaction) in every mode, not only
-- for the publisher: malformed, one used to stop the slot for good; well
-- formed (header: version 1, the table's oid, key length 1, no topic; key
-- "9"), one came out as a row of a table nobody published.
\set VERBOSITY terse
SELECT 'emitted' FROM pg_logical_emit_message(true, 'pg_kappa.snapshot', '\x01'::bytea);
SELECT 'emitted' FROM (SELECT 'a_table'::regclass::oid::bigint AS o) r,
  pg_logical_emit_message(true, 'pg_kappa.snapshot',
    set_byte(set_byte(set_byte(set_byte(set_byte(set_byte('\x00000000000000000000000000000000'::bytea,
      0, 1), 4, (o & 255)::int), 5, ((o >> 8) & 255)::int), 6, ((o >> 16) & 255)::int),
      7, ((o >> 24) & 255)::int), 8, 1)
    || convert_to('9{"id":9,"v":"forged"}', 'UTF8'));
INSERT INTO b_table VALUES (2, 'after them');
SELECT data FROM pg_logical_slot_get_changes('options_slot', NULL, NULL, 'format', 'text');
\set VERBOSITY default

SELECT pg_drop_replication_slot('options_slot');
DROP TABLE a_table, b_table, other.a_table;
DROP SCHEMA other;
