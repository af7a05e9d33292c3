-- The JSON encoding of every kind of column, through the SQL interface.
SET timezone = 'America/New_York';	-- output is UTC whatever the session says
SET datestyle = 'SQL, DMY';

-- Replace what changes from run to run: commit LSN, xid, times.
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

CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE DOMAIN money_amount AS numeric(12,2) CHECK (VALUE > -1000000);

CREATE TABLE everything (
    id          bigint PRIMARY KEY,
    b           boolean,
    i2          smallint,
    i4          integer,
    i8          bigint,
    o           oid,
    f4          real,
    f8          double precision,
    n           numeric,
    amount      money_amount,
    ts          timestamptz,
    tsl         timestamp,
    d           date,
    t           time,
    iv          interval,
    txt         text,
    vc          varchar(20),
    ch          char(3),
    by          bytea,
    js          json,
    jb          jsonb,
    ints        integer[],
    grid        text[][],
    u           uuid,
    ip          inet,
    m           mood
);

SELECT 'init' FROM pg_create_logical_replication_slot('types_slot', 'pg_kappa');

INSERT INTO everything VALUES
 (1, true, -32768, 2147483647, 9223372036854775807, 4294967295,
  1.5, 0.1, 12345678901234567890.123456789, 129.90,
  '2026-11-21 10:15:03.12+01', '2026-11-21 10:15:03.120001', '2024-02-29',
  '23:59:59.999999', '1 year 2 mons 3 days 04:05:06',
  E'quote " backslash \\ newline \n tab \t bell \007 João Sá ñ 漢字 😀', 'vc', 'ES',
  '\x00ff10', '{"a": [1, 2.50, null], "b": "x"}', '{"b": "x", "a": [1, 2.50, null]}',
  '{1,NULL,3}', '{{a,b},{"c d",NULL}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '192.168.0.1/24', 'happy'),
 (2, false, 0, 0, -1, 0,
  'NaN', '-Infinity', 'NaN', -0.01,
  'infinity', '-infinity', 'infinity',
  '00:00', '-1 day',
  '', '', 'a',
  '\x', 'null', '[]',
  '{}', '{}', NULL, NULL, 'sad'),
 (3, NULL, NULL, NULL, NULL, NULL, 'Infinity', 1e300, 0, 0,
  '0044-03-15 12:00:00+00 BC', '1999-12-31 23:59:59', '0001-01-01 BC',
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);

-- every message is valid JSON, and numbers/strings come back as written
SELECT data::jsonb -> 'after' -> 'n' AS n, data::jsonb -> 'after' ->> 'ts' AS ts,
       data::jsonb -> 'after' -> 'grid' AS grid
  FROM pg_logical_slot_peek_changes('types_slot', NULL, NULL);

SELECT pg_temp.stable(data) FROM pg_logical_slot_get_changes('types_slot', NULL, NULL);

-- Unchanged TOASTed values are marked, never fetched.
CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
INSERT INTO docs VALUES (1, 'first', repeat('0123456789', 1000));
UPDATE docs SET title = 'renamed' WHERE id = 1;
UPDATE docs SET body = 'short now' WHERE id = 1;
SELECT regexp_replace(pg_temp.stable(data), '(0123456789)+', '<10000 digits>')
  FROM pg_logical_slot_get_changes('types_slot', NULL, NULL);

-- ... and REPLICA IDENTITY FULL gives the whole old row
ALTER TABLE docs REPLICA IDENTITY FULL;
UPDATE docs SET title = 'again' WHERE id = 1;
SELECT pg_temp.stable(data) FROM pg_logical_slot_get_changes('types_slot', NULL, NULL);
-- ... which has the unchanged TOASTed values too: they are in the new row,
-- of an update and of the create a key change makes (0.1.5; before, marked)
UPDATE docs SET body = repeat('0123456789', 1000) WHERE id = 1;
SELECT count(*) FROM pg_logical_slot_get_changes('types_slot', NULL, NULL);
UPDATE docs SET title = 'full' WHERE id = 1;
UPDATE docs SET id = 2 WHERE id = 1;
SELECT data::jsonb ->> 'op' AS op, data::jsonb -> 'after' ->> 'id' AS id,
       length(data::jsonb -> 'before' ->> 'body') AS before_body,
       coalesce(length(data::jsonb -> 'after' ->> 'body')::text, 'none') AS after_body,
       position('__debezium_unavailable_value' IN data) > 0 AS marked
  FROM pg_logical_slot_get_changes('types_slot', NULL, NULL)
 WHERE data LIKE '{"op"%';

SELECT pg_drop_replication_slot('types_slot');
DROP TABLE everything, docs;
DROP TYPE mood;
DROP DOMAIN money_amount;
