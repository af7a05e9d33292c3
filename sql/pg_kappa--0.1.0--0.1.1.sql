-- pg_kappa 0.1.0 -> 0.1.1
\echo Use "ALTER EXTENSION pg_kappa UPDATE TO '0.1.1'" to load this file. \quit

-- The stream worker forgets rows whose windows are all final, after
-- kappa.row_memory_retention.  Rows written by 0.1.0 have no windows_end:
-- the worker fills it in the next time it writes them, and forgets the rest
-- only by their age (see docs/operations.md, "Row memory").
ALTER TABLE kappa.stream_rows ADD COLUMN windows_end timestamptz;

-- Rows written by 0.1.0: the end of their windows from the row itself, by
-- the rankings on its topic (a row whose time cannot be read is kept).
DO $$
BEGIN
    BEGIN
        UPDATE kappa.stream_rows s
           SET windows_end = (SELECT max((kappa.ranking_window(r.name,
                                             (s.row_data::jsonb ->> r.event_time_field)::timestamptz)).window_end)
                                FROM kappa.rankings r
                               WHERE r.input = 'events'
                               AND coalesce(r.source_topic, current_setting('kappa.sales_topic')) = s.topic)
         WHERE s.row_data IS NOT NULL;
    EXCEPTION WHEN data_exception THEN
        DECLARE
            row record;
        BEGIN
            FOR row IN SELECT topic, key FROM kappa.stream_rows WHERE row_data IS NOT NULL LOOP
                BEGIN
                    UPDATE kappa.stream_rows s
                       SET windows_end = (SELECT max((kappa.ranking_window(r.name,
                                                         (s.row_data::jsonb ->> r.event_time_field)::timestamptz)).window_end)
                                            FROM kappa.rankings r
                                           WHERE r.input = 'events'
                               AND coalesce(r.source_topic, current_setting('kappa.sales_topic')) = s.topic)
                     WHERE s.topic = row.topic AND s.key = row.key;
                EXCEPTION WHEN data_exception THEN
                    NULL;
                END;
            END LOOP;
        END;
    END;
END
$$;

-- Finding the rows to forget without reading the table.
CREATE INDEX stream_rows_windows_end ON kappa.stream_rows
    USING brin (windows_end) WITH (autosummarize = on);
