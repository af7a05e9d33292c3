-- -------------------------------------------------------------------------
-- Store sources: counters
-- -------------------------------------------------------------------------
CREATE FUNCTION kappa.source_stats(
    OUT source text,
    OUT pid integer,
    OUT state text,
    OUT files_seen bigint,
    OUT rows_ingested bigint,
    OUT rows_rejected bigint,
    OUT errors bigint,
    OUT last_error text,
    OUT last_error_at timestamptz,
    OUT last_success_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'kappa_source_stats'
LANGUAGE C STABLE;

CREATE VIEW kappa.stat_sources AS
SELECT * FROM kappa.source_stats();

COMMENT ON VIEW kappa.stat_sources IS
    'Store sources (CSV inbox, SOAP payments, HTTP): files, rows ingested and rejected, errors';

REVOKE ALL ON FUNCTION kappa.source_stats() FROM PUBLIC;
REVOKE ALL ON kappa.stat_sources FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kappa.source_stats() TO pg_monitor;
GRANT SELECT ON kappa.stat_sources TO pg_monitor;
