-- pg_kappa 0.1.3 -> 0.1.4
\echo Use "ALTER EXTENSION pg_kappa UPDATE TO '0.1.4'" to load this file. \quit

-- Sale keys and topics compare as bytes (COLLATE "C"), whatever the
-- database's collation: every lookup and insertion of kappa.stream_rows
-- compares keys, and with a language's collation each comparison is a
-- strcoll() (and the index depends on the C library's collation version).
-- The columns keep their type, so the tables are not rewritten; their
-- indexes are rebuilt, under an exclusive lock (docs/operations.md,
-- "Upgrading").  kappa.sales_enriched reads the columns, so it is made again.
DROP VIEW kappa.sales_enriched;

ALTER TABLE kappa.stream_rows
    ALTER COLUMN topic TYPE text COLLATE "C",
    ALTER COLUMN key TYPE text COLLATE "C";
ALTER TABLE kappa.payments
    ALTER COLUMN sale_id TYPE text COLLATE "C";
ALTER TABLE kappa.payment_history
    ALTER COLUMN sale_id TYPE text COLLATE "C";

-- Sales with their payment status.
CREATE VIEW kappa.sales_enriched AS
SELECT s.key AS sale_id, s.topic, s.row_data::jsonb AS sale,
       coalesce(p.status, 'PENDING') AS payment_status, p.payment_id, p.confirmed_at
  FROM kappa.stream_rows s
  LEFT JOIN kappa.payments p ON p.sale_id = s.key
 WHERE NOT s.deleted;
GRANT SELECT ON kappa.sales_enriched TO kappa_reader;

-- Changing a column's type drops its statistics: gather them again now
-- rather than when autovacuum next finds enough changes.
ANALYZE kappa.stream_rows, kappa.payments, kappa.payment_history;
