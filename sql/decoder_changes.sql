-- Inserts, updates, deletes, truncates and transactions.
-- source.system_id must be this cluster's (pg_control_system() shows it
-- signed; the envelope unsigned, as pg_controldata does)
CREATE FUNCTION pg_temp.this_cluster() RETURNS text LANGUAGE sql AS $$
  SELECT '"system_id":"' || (system_identifier::numeric
           + CASE WHEN system_identifier < 0 THEN 18446744073709551616 ELSE 0 END) || '"'
    FROM pg_control_system()
$$;
CREATE FUNCTION pg_temp.stable(data text) RETURNS text LANGUAGE sql AS $$
  SELECT regexp_replace(regexp_replace(regexp_replace(regexp_replace(replace(data, pg_temp.this_cluster(), '"system_id":"SYSID"'),
           '"lsn":"[0-9A-F]+/[0-9A-F]+"', '"lsn":"LSN"', 'g'),
           '"txid":[0-9]+', '"txid":XID', 'g'),
           '"ts_ms":[0-9]{13}', '"ts_ms":MS', 'g'),
           '^\{"status":"(BEGIN|END)","id":"[0-9]+"', '{"status":"\1","id":"XID"')
$$;

CREATE TABLE sales (
    sale_id bigint PRIMARY KEY, store_id text NOT NULL, seller_id text NOT NULL,
    seller_name text NOT NULL, city text NOT NULL, country char(2) NOT NULL,
    amount numeric(12,2) NOT NULL, currency char(3) NOT NULL DEFAULT 'EUR',
    sold_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE pairs (a int, b text, v int, PRIMARY KEY (b, a));
CREATE TABLE nokey (v int);

SELECT 'init' FROM pg_create_logical_replication_slot('changes_slot', 'pg_kappa');

-- one row
INSERT INTO sales VALUES (1001, 'MAD-01', 'S-17', 'Ana Ruiz', 'Madrid', 'ES', 129.90, 'EUR',
                          '2026-11-21T10:15:03.12Z');
-- several rows in one statement, several statements in one transaction
BEGIN;
INSERT INTO sales (sale_id, store_id, seller_id, seller_name, city, country, amount, sold_at)
SELECT 2000 + i, 'BCN-02', 'S-22', 'Jordi Puig', 'Barcelona', 'ES', i * 10.5,
       '2026-11-21T11:00:00Z'::timestamptz + i * interval '1 minute'
  FROM generate_series(1, 3) i;
UPDATE sales SET amount = amount + 1 WHERE sale_id = 2001;
DELETE FROM sales WHERE sale_id = 2002;
COMMIT;
-- rolled back: nothing
BEGIN;
INSERT INTO sales VALUES (9999, 'X', 'X', 'X', 'X', 'XX', 1, 'EUR', now());
ROLLBACK;
-- a rolled-back subtransaction inside a committed one
BEGIN;
INSERT INTO sales VALUES (3001, 'LIS-01', 'S-31', 'João Sá', 'Lisboa', 'PT', 249.00, 'EUR', '2026-11-21T10:15:00Z');
SAVEPOINT s;
INSERT INTO sales VALUES (3002, 'LIS-01', 'S-31', 'João Sá', 'Lisboa', 'PT', 1.00, 'EUR', '2026-11-21T10:16:00Z');
ROLLBACK TO s;
COMMIT;
-- the key changes: a delete of the old key, a create of the new one
UPDATE sales SET sale_id = 1002 WHERE sale_id = 1001;

SELECT pg_temp.stable(data) FROM pg_logical_slot_get_changes('changes_slot', NULL, NULL);

-- the same in the readable form, with message keys and transaction markers
INSERT INTO pairs VALUES (1, 'x', 10), (2, 'y"q', 20);
UPDATE pairs SET v = 11 WHERE a = 1;
UPDATE pairs SET a = 3 WHERE a = 2;
DELETE FROM pairs WHERE a = 1;
INSERT INTO nokey VALUES (1);
SELECT regexp_replace(data, '^(BEGIN|COMMIT) [0-9]+', '\1 XID')
  FROM pg_logical_slot_get_changes('changes_slot', NULL, NULL,
                                   'format', 'text', 'include-transaction', 'on');

-- REPLICA IDENTITY FULL: updates and deletes carry the whole old row
ALTER TABLE sales REPLICA IDENTITY FULL;
UPDATE sales SET amount = 130.00 WHERE sale_id = 1002;
DELETE FROM sales WHERE sale_id = 1002;
SELECT pg_temp.stable(data) FROM pg_logical_slot_get_changes('changes_slot', NULL, NULL);

-- truncate, with transaction markers in JSON
TRUNCATE pairs, nokey;
SELECT pg_temp.stable(data) FROM pg_logical_slot_get_changes('changes_slot', NULL, NULL,
                                                             'include-transaction', 'on');

-- seq numbers a transaction's messages 0, 1, 2, ... and the commit LSN is shared
INSERT INTO pairs SELECT i, 'k', i FROM generate_series(1, 5) i;
SELECT count(*) AS messages,
       count(DISTINCT data::jsonb #>> '{source,lsn}') AS commit_lsns,
       array_agg((data::jsonb #>> '{source,seq}')::int ORDER BY n) AS seqs
  FROM pg_logical_slot_get_changes('changes_slot', NULL, NULL) WITH ORDINALITY AS c(lsn, xid, data, n);

-- An update that leaves a TOASTed key alone: the new row holds a pointer
-- to the key's TOAST value, which decoding cannot read, and PostgreSQL logs
-- the old key in line.  The update is one "u" with the whole key, not a
-- delete and a create with the key missing (before 0.1.5).
CREATE TABLE long_keys (id text PRIMARY KEY, v text);
ALTER TABLE long_keys ALTER COLUMN id SET STORAGE EXTERNAL;
INSERT INTO long_keys VALUES (repeat('k', 2500), 'first');
SELECT 'consumed' FROM pg_logical_slot_get_changes('changes_slot', NULL, NULL) LIMIT 1;
UPDATE long_keys SET v = 'second';
SELECT data::jsonb ->> 'op' AS op,
       data::jsonb #>> '{after,id}' = repeat('k', 2500) AS whole_key,
       data::jsonb #>> '{after,v}' AS v
  FROM pg_logical_slot_get_changes('changes_slot', NULL, NULL);
UPDATE long_keys SET v = 'third';
SELECT substr(data, 1, 40) AS head,
       position(' key ' || repeat('k', 2500) || ':' IN data) > 0 AS message_key
  FROM pg_logical_slot_get_changes('changes_slot', NULL, NULL, 'format', 'text');

SELECT pg_drop_replication_slot('changes_slot');
DROP TABLE sales, pairs, nokey, long_keys;

-- A decoding that ends in an error never calls the plugin's shutdown: its
-- table cache goes with the aborted statement's memory, and invalidations
-- that follow in the same session must not reach it (0.1.5).
SELECT 'init' FROM pg_create_logical_replication_slot('cancel_slot', 'pg_kappa');
CREATE TABLE many (id int PRIMARY KEY, v text);
INSERT INTO many SELECT i, 'v' FROM generate_series(1, 300000) i;
SET statement_timeout = '200ms';
DO $$
BEGIN
  PERFORM count(*) FROM pg_logical_slot_peek_changes('cancel_slot', NULL, NULL);
EXCEPTION WHEN query_canceled THEN
  NULL;
END $$;
RESET statement_timeout;
ANALYZE many;
ALTER TABLE many ADD COLUMN w int;
SELECT 'alive' AS session;
SELECT pg_drop_replication_slot('cancel_slot');
DROP TABLE many;
