-- -------------------------------------------------------------------------
-- CSV inbox: the ledger of files (see docs/csv-inbox.md)
-- -------------------------------------------------------------------------

-- One row per file the CSV inbox worker took, identified by the SHA-256 of
-- its content.  A file is 'processed' in the same transaction that stores
-- its dead letters, after Kafka acknowledged all its rows; content that is
-- 'processed' once is never sent again (a later copy is a 'duplicate').
CREATE TABLE kappa.csv_files (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size bigint NOT NULL,
    state text NOT NULL
        CHECK (state IN ('processing', 'processed', 'duplicate', 'failed', 'abandoned')),
    rows_ingested bigint NOT NULL DEFAULT 0,
    rows_rejected bigint NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 1,
    -- the id of the 'processed' row with the same content.  Not a foreign
    -- key (0.1.5): pg_dump keeps this table's rows, and one referring to
    -- its own table made every pg_dump warn of circular foreign keys and
    -- of restores that might need --disable-triggers
    duplicate_of bigint,
    first_seen timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    moved_to text,
    error text,
    -- when the move to moved_to was done (NULL: not yet, or never)
    moved_at timestamptz
);
CREATE UNIQUE INDEX csv_files_processed_once ON kappa.csv_files (sha256)
    WHERE state = 'processed';
CREATE INDEX csv_files_name ON kappa.csv_files (name);

COMMENT ON TABLE kappa.csv_files IS
    'Files taken from the CSV inbox: content hash, outcome, rows sent and refused, where the file went';

SELECT pg_catalog.pg_extension_config_dump('kappa.csv_files', '');
SELECT pg_catalog.pg_extension_config_dump('kappa.csv_files_id_seq', '');
REVOKE ALL ON kappa.csv_files FROM PUBLIC;
GRANT SELECT ON kappa.csv_files TO pg_monitor;
