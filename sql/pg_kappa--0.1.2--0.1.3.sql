-- pg_kappa 0.1.2 -> 0.1.3
\echo Use "ALTER EXTENSION pg_kappa UPDATE TO '0.1.3'" to load this file. \quit

-- kappa.stream_rows is looked up and extended by key, one index entry per
-- sale: with the key first, comparisons are decided by the first column
-- (the topic is the same for nearly every row).  Rebuilds the index; the
-- table is locked while it does (docs/operations.md, "Upgrading").
ALTER TABLE kappa.stream_rows
    DROP CONSTRAINT stream_rows_pkey,
    ADD CONSTRAINT stream_rows_pkey PRIMARY KEY (key, topic);
