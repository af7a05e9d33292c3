-- pg_kappa 0.1.0 -> 0.1.1
\echo Use "ALTER EXTENSION pg_kappa UPDATE TO '0.1.1'" to load this file. \quit

-- The stream worker forgets rows whose windows are all final, after
-- kappa.row_memory_retention (docs/rankings.md, "Row memory").
ALTER TABLE kappa.stream_rows ADD COLUMN windows_end timestamptz;

-- Rows written by 0.1.0: the end of their windows from the row itself, by
-- the rankings on its topic (a row whose time cannot be read is kept).
DO $$
DECLARE
    fill CONSTANT text := $sql$
        UPDATE kappa.stream_rows s
           SET windows_end = (SELECT max((kappa.ranking_window(r.name,
                                             (s.row_data::jsonb ->> r.event_time_field)::timestamptz)).window_end)
                                FROM kappa.rankings r
                               WHERE r.input = 'events'
                                 AND coalesce(r.source_topic, current_setting('kappa.sales_topic')) = s.topic)
         WHERE s.row_data IS NOT NULL$sql$;
    row record;
BEGIN
    EXECUTE fill;
EXCEPTION WHEN data_exception THEN
    -- some row's time cannot be read: row by row, skipping those
    FOR row IN SELECT topic, key FROM kappa.stream_rows WHERE row_data IS NOT NULL LOOP
        BEGIN
            EXECUTE fill || ' AND s.topic = $1 AND s.key = $2' USING row.topic, row.key;
        EXCEPTION WHEN data_exception THEN
            NULL;
        END;
    END LOOP;
END
$$;

-- Finding the rows to forget without reading the table.
CREATE INDEX stream_rows_windows_end ON kappa.stream_rows
    USING brin (windows_end) WITH (autosummarize = on);
