-- CREATE EXTENSION in a database where another role made schema "kappa"
-- first: refused, since the workers run as a superuser on what is in it.
SELECT current_database() AS home \gset
CREATE DATABASE kappa_squat;
\c kappa_squat
CREATE ROLE kappa_squatter;
GRANT CREATE ON DATABASE kappa_squat TO kappa_squatter;
SET ROLE kappa_squatter;
CREATE SCHEMA kappa;
-- (closer to format('...', text) than pg_catalog's: the refusal must not call it)
CREATE FUNCTION kappa.format(text, text) RETURNS text LANGUAGE sql AS $$SELECT 'mine'$$;
-- (exact matches for "oid = regclass" and "oid <> regclass", which
-- pg_catalog has only through a cast: the checks must not call them)
CREATE FUNCTION kappa.planted(oid, regclass) RETURNS boolean LANGUAGE plpgsql
    AS $$BEGIN RAISE EXCEPTION 'planted operator called by %', current_user; END$$;
CREATE OPERATOR kappa.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = kappa.planted);
CREATE OPERATOR kappa.<> (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = kappa.planted);
RESET ROLE;
\set VERBOSITY default
CREATE EXTENSION pg_kappa;
-- the schema given to a superuser, but another role may still create in it
ALTER SCHEMA kappa OWNER TO CURRENT_USER;
GRANT CREATE ON SCHEMA kappa TO kappa_squatter;
CREATE EXTENSION pg_kappa;
GRANT CREATE ON SCHEMA kappa TO PUBLIC;
REVOKE CREATE ON SCHEMA kappa FROM kappa_squatter;
CREATE EXTENSION pg_kappa;
-- a superuser's alone, but holding the function the squatter made there
-- (the workers might call a function of schema kappa): refused
REVOKE CREATE ON SCHEMA kappa FROM PUBLIC;
CREATE EXTENSION pg_kappa;
DROP FUNCTION kappa.format(text, text);
DROP OPERATOR kappa.= (oid, regclass);
DROP OPERATOR kappa.<> (oid, regclass);
DROP FUNCTION kappa.planted(oid, regclass);
-- empty, but the installer's default privileges would give another role
-- rights on the tables made there (TRIGGER: triggers the workers would
-- fire as superuser): refused
ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO kappa_squatter;
CREATE EXTENSION pg_kappa;
ALTER DEFAULT PRIVILEGES REVOKE ALL ON TABLES FROM kappa_squatter;
-- a superuser's alone and empty: installed
SET client_min_messages = warning;
CREATE EXTENSION pg_kappa;
RESET client_min_messages;
SELECT extname, extnamespace::regnamespace FROM pg_extension WHERE extname = 'pg_kappa';
DROP EXTENSION pg_kappa;
DROP SCHEMA kappa;
-- and where CREATE EXTENSION makes the schema itself; the roles outlive
-- the extension, and a kappa_admin that is not a kappa_reader becomes one
REVOKE kappa_reader FROM kappa_admin;
SET client_min_messages = warning;
CREATE EXTENSION pg_kappa;
RESET client_min_messages;
SELECT pg_get_userbyid(nspowner) = current_user AS owned_by_installer FROM pg_namespace WHERE nspname = 'kappa';
SELECT pg_has_role('kappa_admin', 'kappa_reader', 'MEMBER') AS admin_reads;
DROP EXTENSION pg_kappa;
\c :home
DROP DATABASE kappa_squat;
DROP ROLE kappa_squatter;
