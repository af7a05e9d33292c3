-- pg_kappa install script, assembled by the Makefile from the SQL of each
-- component (src/*.sql, src/*/*.sql).  See docs/sql-reference.md.
\echo Use "CREATE EXTENSION pg_kappa" to load this file. \quit

-- CREATE EXTENSION takes a schema "kappa" that already exists as it is.
-- The workers run as the bootstrap superuser on the tables in it, so a
-- role that could create objects there, or rename the schema and put one
-- of its making in its place, could have its triggers run as superuser.
DO $$
DECLARE
    who text;
BEGIN
    SELECT r.rolname INTO who
      FROM pg_catalog.pg_namespace n
      JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
     WHERE n.nspname = 'kappa' AND NOT r.rolsuper;
    IF who IS NULL THEN
        SELECT coalesce(r.rolname, 'PUBLIC') INTO who
          FROM pg_catalog.pg_namespace n,
               pg_catalog.aclexplode(n.nspacl) a
          LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
         WHERE n.nspname = 'kappa' AND a.privilege_type = 'CREATE'
           AND NOT coalesce(r.rolsuper, false)
         LIMIT 1;
    END IF;
    IF who IS NOT NULL THEN
        RAISE EXCEPTION 'schema "kappa" is not a superuser''s alone'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('Role %s owns it or may create objects in it; the pg_kappa workers run as a superuser on the objects in it.', who),
                  HINT = 'Drop schema kappa, or make a superuser its owner and revoke CREATE on it from other roles, then run CREATE EXTENSION pg_kappa again.';
    END IF;
END
$$;

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

