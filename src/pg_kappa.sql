-- pg_kappa install script, assembled by the Makefile from the SQL of each
-- component (src/*.sql, src/*/*.sql).  See docs/sql-reference.md.
\echo Use "CREATE EXTENSION pg_kappa" to load this file. \quit

-- -------------------------------------------------------------------------
-- Dead letters: records a pipeline refused, with their origin and reason
-- -------------------------------------------------------------------------
CREATE TABLE kappa.dead_letters (
    id bigserial PRIMARY KEY,
    source text NOT NULL,
    topic text,
    partition integer,
    "offset" bigint,
    file text,
    line bigint,
    raw bytea,
    error text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON kappa.dead_letters (source, received_at);

COMMENT ON TABLE kappa.dead_letters IS
    'Records refused by pg_kappa (source, Kafka position or file/line, raw bytes, reason)';

SELECT pg_catalog.pg_extension_config_dump('kappa.dead_letters', '');
SELECT pg_catalog.pg_extension_config_dump('kappa.dead_letters_id_seq', '');
REVOKE ALL ON kappa.dead_letters FROM PUBLIC;
GRANT SELECT ON kappa.dead_letters TO pg_monitor;

