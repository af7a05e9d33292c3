-- pg_kappa install script, assembled by the Makefile from the SQL of each
-- component (src/*.sql, src/*/*.sql).  See docs/sql-reference.md.
\echo Use "CREATE EXTENSION pg_kappa" to load this file. \quit

-- CREATE EXTENSION takes a schema "kappa" that already exists as it is.
-- The workers run as the bootstrap superuser on what is in it, so a role
-- that could create objects there, or that made some already (functions
-- the workers call by name, tables with triggers), or that could rename
-- the schema and put one of its making in its place, could have its code
-- run as superuser.  (Everything here is schema-qualified: the script runs
-- with search_path = kappa, and a squatter's kappa.format(text, text)
-- would be a closer match than pg_catalog's.)
DO $$
DECLARE
    nsp oid;
    who text;
BEGIN
    SELECT n.oid INTO nsp FROM pg_catalog.pg_namespace n
     WHERE n.nspname = 'kappa'::pg_catalog.name;
    -- Default privileges of the installing role would give its grantees
    -- rights on the tables made here: TRIGGER, say, whose triggers the
    -- workers would fire as superuser.
    SELECT pg_catalog.concat(CASE WHEN a.grantee = 0::pg_catalog.oid THEN 'PUBLIC'::pg_catalog.name ELSE r.rolname END,
                             ' (', a.privilege_type, ')')
      INTO who
      FROM pg_catalog.pg_default_acl d,
           pg_catalog.aclexplode(d.defaclacl) a
      LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
     WHERE d.defaclrole = (SELECT u.oid FROM pg_catalog.pg_roles u WHERE u.rolname = CURRENT_USER)
       AND (d.defaclnamespace = 0::pg_catalog.oid OR d.defaclnamespace = nsp)
       AND a.grantee <> d.defaclrole
       AND (r.rolsuper IS NULL OR NOT r.rolsuper)
     ORDER BY 1 LIMIT 1;
    IF who IS NOT NULL THEN
        RAISE EXCEPTION 'default privileges would grant other roles rights on pg_kappa''s objects'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = pg_catalog.concat('The installing role''s default privileges grant ', who, ' on the objects it makes; the pg_kappa workers run as a superuser on them.'),
                  HINT = 'Revoke those default privileges (ALTER DEFAULT PRIVILEGES ... REVOKE), create the extension, then set them again.';
    END IF;
    IF nsp IS NULL THEN
        RETURN;
    END IF;
    SELECT r.rolname INTO who
      FROM pg_catalog.pg_namespace n
      JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
     WHERE n.oid = nsp AND NOT r.rolsuper;
    IF who IS NULL THEN
        SELECT CASE WHEN a.grantee = 0::pg_catalog.oid THEN 'PUBLIC'::pg_catalog.name ELSE r.rolname END
          INTO who
          FROM pg_catalog.pg_namespace n,
               pg_catalog.aclexplode(n.nspacl) a
          LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
         WHERE n.oid = nsp AND a.privilege_type = 'CREATE'::pg_catalog.text
           AND (r.rolsuper IS NULL OR NOT r.rolsuper)
         LIMIT 1;
    END IF;
    IF who IS NOT NULL THEN
        RAISE EXCEPTION 'schema "kappa" is not a superuser''s alone'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = pg_catalog.concat('Role ', who, ' owns it or may create objects in it; the pg_kappa workers run as a superuser on the objects in it.'),
                  HINT = 'Drop schema kappa (or the default privileges that grant CREATE on new schemas), or make a superuser its owner and revoke CREATE on it from other roles, then run CREATE EXTENSION pg_kappa again.';
    END IF;
    -- (every object made in a schema depends on it: relations, functions,
    -- types, operators, collations, text search objects, ...; so does this
    -- extension, being created in it)
    -- (oids compared with oids only: "oid = regclass" would take an
    -- exactly matching kappa.=(oid, regclass) over pg_catalog's, which
    -- needs a cast)
    IF EXISTS (SELECT FROM pg_catalog.pg_depend
                WHERE refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass::pg_catalog.oid
                  AND refobjid = nsp
                  AND classid <> 'pg_catalog.pg_extension'::pg_catalog.regclass::pg_catalog.oid) THEN
        RAISE EXCEPTION 'schema "kappa" is not empty'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'pg_kappa makes the objects of schema kappa itself; the workers run as a superuser on them.',
                  HINT = 'Drop schema kappa (or the objects in it), then run CREATE EXTENSION pg_kappa again.';
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
-- raw is the record as it came (a whole row of a published table, a CSV
-- line, a SOAP confirmation): for superusers, and whom they grant it to
GRANT SELECT (id, source, topic, partition, "offset", file, line, error, received_at)
    ON kappa.dead_letters TO pg_monitor;

