
-- -------------------------------------------------------------------------
-- Rankings: windowed top-N definitions (src/stream/)
-- -------------------------------------------------------------------------

-- Readers query rankings; admins define them.  Roles are cluster-wide and
-- outlive the extension.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'kappa_reader') THEN
        CREATE ROLE kappa_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'kappa_admin') THEN
        CREATE ROLE kappa_admin NOLOGIN IN ROLE kappa_reader;
    END IF;
    -- an admin role made beforehand reads what it administers too
    IF NOT pg_catalog.pg_has_role('kappa_admin', 'kappa_reader', 'MEMBER') THEN
        GRANT kappa_reader TO kappa_admin;
    END IF;
END
$$;

CREATE TABLE kappa.rankings (
    id integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    name text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    input text NOT NULL DEFAULT 'events' CHECK (input IN ('events', 'results')),
    source_topic text CHECK (source_topic ~ '^[A-Za-z0-9._-]{1,249}$'),
    group_by text[] NOT NULL,
    item text,
    item_label text,
    measure text NOT NULL CHECK (measure IN ('sum', 'count')),
    measure_field text,
    event_time_field text NOT NULL DEFAULT 'sold_at',
    window_size interval NOT NULL,
    calendar boolean NOT NULL,
    window_origin timestamptz,
    time_zone text NOT NULL,
    grace interval CHECK (grace >= interval '0'),
    confirmed_only boolean NOT NULL DEFAULT false,
    results_topic text CHECK (results_topic ~ '^[A-Za-z0-9._-]{1,249}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (measure = 'count' OR measure_field IS NOT NULL),
    CHECK (cardinality(group_by) BETWEEN 1 AND 8),
    -- false: updates and deletes are undone from the event's "before" row and
    -- replays recognised by source.lsn/seq, with no kappa.stream_rows (0.1.2)
    row_memory boolean NOT NULL DEFAULT true
);

COMMENT ON TABLE kappa.rankings IS
    'Windowed top-N rankings computed by the stream workers (see kappa.create_ranking)';

-- Where each window stands.  A window is final once stream time passed
-- window_end + grace; its results are then produced to the results topic.
CREATE TABLE kappa.ranking_windows (
    ranking text NOT NULL REFERENCES kappa.rankings (name) ON DELETE CASCADE,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    is_final boolean NOT NULL DEFAULT false,
    finalized_at timestamptz,
    produced_at timestamptz,
    PRIMARY KEY (ranking, window_start)
);
CREATE INDEX ranking_windows_to_produce ON kappa.ranking_windows (ranking)
    WHERE is_final AND produced_at IS NULL;

-- The aggregates: one row per ranking, window, group (and item).
CREATE TABLE kappa.ranking_results (
    ranking text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    group_values text[] NOT NULL,
    item text NOT NULL DEFAULT '',
    item_label text,
    total numeric NOT NULL,
    sale_count bigint NOT NULL,
    is_final boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ranking, window_start, group_values, item),
    FOREIGN KEY (ranking, window_start) REFERENCES kappa.ranking_windows ON DELETE CASCADE
);
-- top N of a window, and top N within a group of a window
CREATE INDEX ranking_results_top
    ON kappa.ranking_results (ranking, window_start, total DESC, group_values, item);
CREATE INDEX ranking_results_group_top
    ON kappa.ranking_results (ranking, window_start, group_values, total DESC, item);

-- Per ranking: up to where windows are final, and counters.
CREATE TABLE kappa.ranking_state (
    ranking text PRIMARY KEY REFERENCES kappa.rankings (name) ON DELETE CASCADE,
    finalized_through timestamptz,
    events_applied bigint NOT NULL DEFAULT 0,
    late_events bigint NOT NULL DEFAULT 0,
    last_event_at timestamptz
);

-- Events that arrived for a window already final (or past its grace in
-- their partition): recorded, counted, never silently dropped or added.
CREATE TABLE kappa.late_events (
    id bigserial PRIMARY KEY,
    ranking text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    "offset" bigint NOT NULL,
    key text,
    event_time timestamptz,
    window_start timestamptz,
    window_end timestamptz,
    stream_time timestamptz,
    reason text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON kappa.late_events (ranking, received_at);

-- -------------------------------------------------------------------------
-- Stream worker state: Kafka offsets and the memory of counted rows, both
-- written in the transaction that applies a batch.
-- -------------------------------------------------------------------------
-- next_offset -2: from the beginning.  stream_time: the highest event time
-- seen in the partition; last_record_at/caught_up: whether it is idle, for
-- kappa.idle_timeout.
CREATE TABLE kappa.stream_offsets (
    consumer_group text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint NOT NULL,
    stream_time timestamptz,
    last_record_at timestamptz,
    caught_up boolean NOT NULL DEFAULT false,
    high_watermark bigint,
    owner_pid integer,
    assigned_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- the latest CDC position (source.lsn/seq) applied from the partition,
    -- for topics whose rankings have no row memory (0.1.2)
    position_lsn pg_lsn,
    position_seq bigint,
    -- and which cluster's WAL (source.system_id, source.timeline) that
    -- position is in (0.1.5)
    position_system_id bigint,
    position_timeline integer,
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Sink rankings: each producer's latest value per window, group and item.
CREATE TABLE kappa.sink_partials (
    ranking text NOT NULL REFERENCES kappa.rankings (name) ON DELETE CASCADE,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    group_values text[] NOT NULL,
    item text NOT NULL DEFAULT '',
    item_label text,
    producer text NOT NULL,
    total numeric NOT NULL,
    sale_count bigint NOT NULL,
    final boolean NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ranking, window_start, group_values, item, producer)
);

-- What the stream worker last counted for each row (sale) of a topic: the
-- row itself, its CDC position, and the rankings it currently counts in.
-- windows_end is the latest end of a window the row has fallen in, over the
-- rankings on its topic: once every such ranking is final past it by
-- kappa.row_memory_retention, the row is forgotten (0.1.1).
-- Keys and topics compare as bytes (COLLATE "C", 0.1.4): a batch looks up
-- and inserts one index entry per sale, and ids need no language's order;
-- the database's collation would make every comparison a strcoll() and tie
-- the index to the C library's collation version.
CREATE TABLE kappa.stream_rows (
    topic text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    lsn pg_lsn,
    seq bigint,
    deleted boolean NOT NULL DEFAULT false,
    row_data text,
    counted integer[] NOT NULL DEFAULT '{}',
    excluded integer[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now(),
    windows_end timestamptz,
    -- the cluster and timeline whose WAL lsn/seq are in: source.system_id
    -- and source.timeline of the change (NULL when it gave none; 0.1.5)
    system_id bigint,
    timeline integer,
    -- key first: it tells rows apart at the first column of every index
    -- comparison (a batch probes and inserts one entry per sale), and
    -- kappa.sales_enriched finds a sale by its key alone
    PRIMARY KEY (key, topic)
);
-- Finding the rows to forget without reading the table: rows arrive roughly
-- in event-time order, so block ranges summarise windows_end well.  The
-- forgetting pass summarises new block ranges itself (rows_forget), so
-- autosummarize stays off: at a few thousand sales a second it asks
-- autovacuum for more summaries than autovacuum's queue of 256 work items
-- holds, and each request refused is a LOG line (0.1.5).
CREATE INDEX stream_rows_windows_end ON kappa.stream_rows
    USING brin (windows_end) WITH (autosummarize = off);

-- Payment status per sale (latest by confirmation time) and its history.
-- sale_id compares as kappa.stream_rows.key does (0.1.4).
CREATE TABLE kappa.payments (
    sale_id text COLLATE "C" PRIMARY KEY,
    payment_id text NOT NULL,
    status text NOT NULL,
    amount numeric,
    currency text,
    confirmed_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE kappa.payment_history (
    payment_id text NOT NULL,
    status text NOT NULL,
    sale_id text COLLATE "C" NOT NULL,
    amount numeric,
    currency text,
    confirmed_at timestamptz NOT NULL,
    source text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (payment_id, status, confirmed_at)
);
CREATE INDEX ON kappa.payment_history (sale_id);

-- -------------------------------------------------------------------------
-- Window arithmetic
-- -------------------------------------------------------------------------
CREATE FUNCTION kappa.window_bounds(
    ts timestamptz,
    size interval,
    calendar boolean DEFAULT NULL,
    origin timestamptz DEFAULT NULL,
    time_zone text DEFAULT NULL,
    OUT window_start timestamptz,
    OUT window_end timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'kappa_window_bounds'
LANGUAGE C STABLE;

COMMENT ON FUNCTION kappa.window_bounds(timestamptz, interval, boolean, timestamptz, text) IS
    'The tumbling window containing ts: fixed (aligned to origin, default the Unix epoch) or calendar (days/weeks/months in time_zone)';

CREATE FUNCTION kappa.ranking_window(
    ranking text,
    ts timestamptz DEFAULT now(),
    OUT window_start timestamptz,
    OUT window_end timestamptz)
RETURNS record
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r kappa.rankings;
BEGIN
    SELECT * INTO r FROM kappa.rankings WHERE name = ranking;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ranking "%" does not exist', ranking
            USING ERRCODE = 'undefined_object',
                  HINT = 'SELECT name FROM kappa.rankings lists them.';
    END IF;
    -- (a fixed window's zone is not used, and one stored before 0.1.5
    -- was not checked)
    SELECT b.window_start, b.window_end INTO window_start, window_end
      FROM kappa.window_bounds(ts, r.window_size, r.calendar, r.window_origin,
                               CASE WHEN r.calendar THEN r.time_zone END) b;
END
$$;

-- -------------------------------------------------------------------------
-- Managing rankings
-- -------------------------------------------------------------------------
CREATE FUNCTION kappa.create_ranking(
    name text,
    group_by text[],
    window_size interval,
    measure text DEFAULT 'sum',
    measure_field text DEFAULT 'amount',
    item text DEFAULT NULL,
    item_label text DEFAULT NULL,
    calendar boolean DEFAULT NULL,
    window_origin timestamptz DEFAULT NULL,
    time_zone text DEFAULT NULL,
    grace interval DEFAULT NULL,
    confirmed_only boolean DEFAULT false,
    source_topic text DEFAULT NULL,
    results_topic text DEFAULT NULL,
    event_time_field text DEFAULT 'sold_at',
    input text DEFAULT 'events',
    row_memory boolean DEFAULT true)
RETURNS kappa.rankings
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r kappa.rankings;
    field text;
    cal boolean := coalesce(calendar,
                            extract(year FROM window_size) * 12 + extract(month FROM window_size) <> 0);
    zone text := coalesce(time_zone, current_setting('kappa.window_time_zone'));
    topic text := coalesce(source_topic, current_setting('kappa.sales_topic'));
    other kappa.rankings;
BEGIN
    IF name IS NULL OR name !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'invalid ranking name "%"', name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A ranking name starts with a lower-case letter and has at most 63 lower-case letters, digits and underscores.';
    END IF;
    IF EXISTS (SELECT FROM kappa.rankings x WHERE x.name = create_ranking.name) THEN
        RAISE EXCEPTION 'ranking "%" already exists', name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Drop it first with kappa.drop_ranking().';
    END IF;
    IF group_by IS NULL OR cardinality(group_by) NOT BETWEEN 1 AND 8 THEN
        RAISE EXCEPTION 'a ranking groups by 1 to 8 fields'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF array_ndims(group_by) <> 1 OR array_position(group_by, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'group_by must be a one-dimensional array of field names without nulls'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF event_time_field IS NULL THEN
        RAISE EXCEPTION 'event_time_field must not be null'
            USING ERRCODE = 'null_value_not_allowed',
                  DETAIL = 'Windows are of event time, read from this field of the event''s row.';
    END IF;
    IF confirmed_only IS NULL THEN
        RAISE EXCEPTION 'confirmed_only must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    FOREACH field IN ARRAY group_by || ARRAY[item, item_label, measure_field, event_time_field] LOOP
        IF field IS NOT NULL AND field !~ '^[A-Za-z_][A-Za-z0-9_]{0,62}$' THEN
            RAISE EXCEPTION 'invalid field name "%"', field
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'Fields name members of the event''s row ("after"), such as city or seller_id.';
        END IF;
    END LOOP;
    IF item_label IS NOT NULL AND item IS NULL THEN
        RAISE EXCEPTION 'item_label needs an item'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF measure IS NULL OR measure NOT IN ('sum', 'count') THEN
        RAISE EXCEPTION 'invalid measure "%"', measure
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''sum'' (of measure_field) or ''count''.';
    END IF;
    IF measure = 'sum' AND measure_field IS NULL THEN
        RAISE EXCEPTION 'a sum needs a measure_field'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF window_size IS NULL THEN
        RAISE EXCEPTION 'window_size must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- raises "invalid window" with the reason
    PERFORM kappa.window_bounds(now(), window_size, cal, window_origin, zone);
    IF grace < interval '0' THEN
        RAISE EXCEPTION 'grace must not be negative'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF input IS NULL OR input NOT IN ('events', 'results') THEN
        RAISE EXCEPTION 'invalid input "%"', input
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''events'' (change envelopes) or ''results'' (window results of another processor).';
    END IF;
    IF input = 'results' AND source_topic IS NULL THEN
        RAISE EXCEPTION 'a ranking fed by window results needs a source_topic'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF input = 'results' AND confirmed_only THEN
        RAISE EXCEPTION 'confirmed_only applies to rankings fed by events'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF row_memory IS NULL THEN
        RAISE EXCEPTION 'row_memory must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT row_memory AND input = 'results' THEN
        RAISE EXCEPTION 'row_memory applies to rankings fed by events'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF results_topic IS NOT NULL AND input = 'results' THEN
        RAISE EXCEPTION 'results_topic applies to rankings fed by events'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A sink ranking keeps the results other processors produced and produces none itself.';
    END IF;
    IF NOT row_memory AND confirmed_only THEN
        RAISE EXCEPTION 'a confirmed_only ranking needs row memory'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A payment confirmation that arrives after its sale counts the sale then, from the remembered row.';
    END IF;
    -- the rankings of one topic share its row memory, or all go without
    IF input = 'events' THEN
        SELECT x.* INTO other FROM kappa.rankings x
         WHERE x.input = 'events' AND x.row_memory <> create_ranking.row_memory
           AND coalesce(x.source_topic, current_setting('kappa.sales_topic')) = topic
         ORDER BY x.name LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'ranking "%" on topic "%" has row_memory = %', other.name, topic, other.row_memory::text
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'All rankings fed by one topic either remember its rows or all go without.',
                      HINT = format('Create the ranking with row_memory => %s, or drop the rankings of the topic first.', other.row_memory::text);
        END IF;
    END IF;
    FOREACH field IN ARRAY ARRAY[source_topic, results_topic] LOOP
        IF field IS NOT NULL AND field !~ '^[A-Za-z0-9._-]{1,249}$' THEN
            RAISE EXCEPTION 'invalid Kafka topic name "%"', field
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'A topic name has 1 to 249 ASCII letters, digits, ".", "_" and "-".';
        END IF;
    END LOOP;
    -- a topic a table is published into carries its changes: results are
    -- neither produced into it nor read from it (0.1.5)
    SELECT p.relid::regclass::text INTO field FROM kappa.published_tables p
     WHERE coalesce(p.topic, current_setting('kappa.sales_topic'))
           IN (create_ranking.results_topic,
               CASE WHEN create_ranking.input = 'results' THEN create_ranking.source_topic END)
     ORDER BY p.relid LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'table % is published into topic "%"', field,
                        coalesce(create_ranking.results_topic, create_ranking.source_topic)
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = CASE WHEN create_ranking.input = 'results'
                                THEN 'A sink ranking reads other processors'' results from its source topic, not changes.'
                                ELSE 'A ranking produces its results into results_topic, which must not carry changes.' END,
                  HINT = 'Choose another topic.';
    END IF;

    INSERT INTO kappa.rankings (name, input, source_topic, group_by, item, item_label,
                                measure, measure_field, event_time_field, window_size,
                                calendar, window_origin, time_zone, grace, confirmed_only,
                                results_topic, row_memory)
    VALUES (name, input, source_topic, group_by, item, item_label, measure,
            CASE WHEN measure = 'sum' THEN measure_field END, event_time_field,
            window_size, cal, window_origin, zone, grace, confirmed_only, results_topic,
            row_memory)
    RETURNING * INTO r;
    INSERT INTO kappa.ranking_state (ranking) VALUES (r.name);
    RETURN r;
END
$$;

COMMENT ON FUNCTION kappa.create_ranking IS
    'Define a windowed top-N ranking; the stream workers count events consumed from then on';

CREATE FUNCTION kappa.drop_ranking(name text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM kappa.ranking_results x WHERE x.ranking = drop_ranking.name;
    DELETE FROM kappa.rankings x WHERE x.name = drop_ranking.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ranking "%" does not exist', name
            USING ERRCODE = 'undefined_object';
    END IF;
    RETURN true;
END
$$;

-- -------------------------------------------------------------------------
-- Reading rankings
-- -------------------------------------------------------------------------

-- The topic a ranking's final results go to (NULL: none).  The two shipped
-- rankings follow kappa.top_sales_topic and kappa.top_salesman_topic.
CREATE FUNCTION kappa.ranking_results_topic(ranking text)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(r.results_topic,
                    CASE r.name
                        WHEN 'top_sales_by_city' THEN current_setting('kappa.top_sales_topic')
                        WHEN 'top_salesman_by_country' THEN current_setting('kappa.top_salesman_topic')
                    END)
      FROM kappa.rankings r WHERE r.name = ranking
$$;

CREATE VIEW kappa.ranking_definitions AS
SELECT r.name, r.input,
       coalesce(r.source_topic, current_setting('kappa.sales_topic')) AS source_topic,
       r.group_by, r.item, r.item_label, r.measure, r.measure_field, r.event_time_field,
       r.window_size, CASE WHEN r.calendar THEN 'calendar' ELSE 'fixed' END AS window_kind,
       r.window_origin, r.time_zone,
       coalesce(r.grace, current_setting('kappa.default_grace')::interval) AS grace,
       r.confirmed_only,
       kappa.ranking_results_topic(r.name) AS results_topic,
       r.created_at, r.row_memory
  FROM kappa.rankings r;

-- Ties rank by total, then sale count, then group values, then item: the
-- order is total and deterministic.
CREATE FUNCTION kappa.ranking(name text, at timestamptz DEFAULT now(), n integer DEFAULT 10)
RETURNS TABLE (rank bigint, window_start timestamptz, window_end timestamptz,
               group_values text[], item text, item_label text,
               total numeric, sale_count bigint, is_final boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    w record;
    has_item boolean;
BEGIN
    IF n IS NULL OR n < 1 THEN
        RAISE EXCEPTION 'n must be at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO w FROM kappa.ranking_window(name, at);
    SELECT r.item IS NOT NULL INTO has_item FROM kappa.rankings r WHERE r.name = ranking.name;
    IF NOT has_item THEN
        RETURN QUERY
        SELECT row_number() OVER (ORDER BY x.total DESC, x.sale_count DESC, x.group_values),
               x.window_start, x.window_end, x.group_values, NULL::text, NULL::text,
               x.total, x.sale_count, x.is_final
          FROM (SELECT * FROM kappa.ranking_results res
                 WHERE res.ranking = ranking.name AND res.window_start = w.window_start
                 ORDER BY res.total DESC, res.sale_count DESC, res.group_values
                 LIMIT n) x;
    ELSE
        -- Top n items within each group.  The window's groups are found one
        -- primary key descent each (PostgreSQL 15 has no skip scan), then
        -- each group's top n is read from ranking_results_group_top: the
        -- cost follows groups * n, not the items in the window.
        RETURN QUERY
        WITH RECURSIVE grp(gv) AS (
            (SELECT res.group_values FROM kappa.ranking_results res
              WHERE res.ranking = ranking.name AND res.window_start = w.window_start
              ORDER BY res.group_values LIMIT 1)
            UNION ALL
            SELECT (SELECT res.group_values FROM kappa.ranking_results res
                     WHERE res.ranking = ranking.name AND res.window_start = w.window_start
                       AND res.group_values > grp.gv
                     ORDER BY res.group_values LIMIT 1)
              FROM grp
             WHERE grp.gv IS NOT NULL
        )
        SELECT x.rk, x.window_start, x.window_end, x.group_values, x.item, x.item_label,
               x.total, x.sale_count, x.is_final
          FROM grp
         CROSS JOIN LATERAL (
                SELECT t.*, row_number() OVER (ORDER BY t.total DESC, t.sale_count DESC, t.item) AS rk
                  FROM (SELECT * FROM kappa.ranking_results res
                         WHERE res.ranking = ranking.name AND res.window_start = w.window_start
                           AND res.group_values = grp.gv
                         ORDER BY res.total DESC, res.sale_count DESC, res.item
                         LIMIT n) t) x
         WHERE grp.gv IS NOT NULL
         ORDER BY x.group_values, x.rk;
    END IF;
END
$$;

CREATE FUNCTION kappa.top_sales_by_city(at timestamptz DEFAULT now(), n integer DEFAULT 10)
RETURNS TABLE (rank bigint, city text, total_sales numeric, sale_count bigint,
               window_start timestamptz, window_end timestamptz, is_final boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.rank, r.group_values[1], r.total, r.sale_count, r.window_start, r.window_end, r.is_final
      FROM kappa.ranking('top_sales_by_city', at, n) r
$$;

CREATE TYPE kappa.salesman_rank AS (
    country text, rank bigint, seller_id text, seller_name text,
    total_sales numeric, sale_count bigint,
    window_start timestamptz, window_end timestamptz, is_final boolean);

CREATE FUNCTION kappa.top_salesmen_by_country(country text DEFAULT NULL,
                                              at timestamptz DEFAULT now(),
                                              n integer DEFAULT 10)
RETURNS SETOF kappa.salesman_rank
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    w record;
BEGIN
    IF n IS NULL OR n < 1 THEN
        RAISE EXCEPTION 'n must be at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF top_salesmen_by_country.country IS NULL THEN
        RETURN QUERY
        SELECT r.group_values[1], r.rank, r.item, r.item_label, r.total, r.sale_count,
               r.window_start, r.window_end, r.is_final
          FROM kappa.ranking('top_salesman_by_country', at, n) r;
        RETURN;
    END IF;
    SELECT * INTO w FROM kappa.ranking_window('top_salesman_by_country', at);
    RETURN QUERY
    SELECT res.group_values[1],
           row_number() OVER (ORDER BY res.total DESC, res.sale_count DESC, res.item),
           res.item, res.item_label, res.total, res.sale_count,
           res.window_start, res.window_end, res.is_final
      FROM (SELECT * FROM kappa.ranking_results r
             WHERE r.ranking = 'top_salesman_by_country' AND r.window_start = w.window_start
               AND r.group_values = ARRAY[top_salesmen_by_country.country]
             ORDER BY r.total DESC, r.sale_count DESC, r.item
             LIMIT n) res;
END
$$;

-- Every window, ranked.
CREATE VIEW kappa.top_sales_by_city AS
SELECT r.window_start, r.window_end, r.group_values[1] AS city,
       r.total AS total_sales, r.sale_count, r.is_final,
       rank() OVER (PARTITION BY r.window_start
                    ORDER BY r.total DESC, r.sale_count DESC, r.group_values) AS rank
  FROM kappa.ranking_results r
 WHERE r.ranking = 'top_sales_by_city';

CREATE VIEW kappa.top_salesman_by_country AS
SELECT r.window_start, r.window_end, r.group_values[1] AS country,
       r.item AS seller_id, r.item_label AS seller_name,
       r.total AS total_sales, r.sale_count, r.is_final,
       rank() OVER (PARTITION BY r.window_start, r.group_values
                    ORDER BY r.total DESC, r.sale_count DESC, r.item) AS rank
  FROM kappa.ranking_results r
 WHERE r.ranking = 'top_salesman_by_country';

-- Sales with their payment status.
-- "sale" holds the reference sale's columns only (0.1.5): the row as it
-- came (all the published table's columns) stays in kappa.stream_rows, so
-- that kappa_reader does not read columns of the source table it was never
-- granted.
CREATE VIEW kappa.sales_enriched AS
SELECT s.key AS sale_id, s.topic,
       (SELECT pg_catalog.jsonb_object_agg(c.key, c.value)
          FROM pg_catalog.jsonb_each(s.row_data::jsonb) c
         WHERE c.key = ANY ('{sale_id,store_id,seller_id,seller_name,city,country,amount,currency,sold_at}'::text[])) AS sale,
       coalesce(p.status, 'PENDING') AS payment_status, p.payment_id, p.confirmed_at
  FROM kappa.stream_rows s
  LEFT JOIN kappa.payments p ON p.sale_id = s.key
 WHERE NOT s.deleted;

-- -------------------------------------------------------------------------
-- Status
-- -------------------------------------------------------------------------
CREATE FUNCTION kappa.stream_worker_status(
    OUT worker integer,
    OUT pid integer,
    OUT state text,
    OUT consumer_group text,
    OUT partitions integer,
    OUT messages bigint,
    OUT events_applied bigint,
    OUT duplicates bigint,
    OUT late_events bigint,
    OUT dead_letters bigint,
    OUT batches bigint,
    OUT last_batch_at timestamptz,
    OUT last_error text,
    OUT last_error_at timestamptz,
    OUT started_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'kappa_stream_worker_status'
LANGUAGE C STABLE;

-- One row per partition the stream workers consume, with its worker.  A
-- partition caught up has no lag, though its high watermark may stand past
-- next_offset: transaction markers take offsets no message has.
CREATE VIEW kappa.stat_consumers AS
SELECT o.consumer_group, o.topic, o.partition, w.worker, o.owner_pid AS pid,
       coalesce(w.state, 'not running') AS state,
       o.next_offset, o.high_watermark,
       CASE WHEN o.caught_up THEN 0::bigint
            WHEN o.next_offset >= 0 AND o.high_watermark IS NOT NULL
            THEN greatest(o.high_watermark - o.next_offset, 0) END AS lag,
       o.stream_time, o.last_record_at, o.caught_up,
       w.messages, w.events_applied, w.duplicates, w.late_events, w.dead_letters,
       w.last_batch_at, w.last_error, w.last_error_at
  FROM kappa.stream_offsets o
  LEFT JOIN kappa.stream_worker_status() w ON w.pid = o.owner_pid;

COMMENT ON VIEW kappa.stat_consumers IS
    'Stream workers by partition: offsets, lag, stream time, events applied, late, dead letters, last error';

CREATE VIEW kappa.stat_rankings AS
SELECT r.name AS ranking, s.events_applied, s.late_events, s.finalized_through, s.last_event_at,
       count(w.*) FILTER (WHERE NOT w.is_final) AS open_windows,
       count(w.*) FILTER (WHERE w.is_final) AS final_windows,
       count(w.*) FILTER (WHERE w.is_final AND w.produced_at IS NULL) AS results_pending,
       max(w.window_start) AS latest_window
  FROM kappa.rankings r
  LEFT JOIN kappa.ranking_state s ON s.ranking = r.name
  LEFT JOIN kappa.ranking_windows w ON w.ranking = r.name
 GROUP BY r.name, s.events_applied, s.late_events, s.finalized_through, s.last_event_at;

COMMENT ON VIEW kappa.stat_rankings IS
    'Rankings: events applied, late events, open and final windows, results waiting to be produced';

-- -------------------------------------------------------------------------
-- The two shipped rankings
-- -------------------------------------------------------------------------
SELECT kappa.create_ranking('top_sales_by_city', ARRAY['city'], interval '1 day',
                            calendar => true);
SELECT kappa.create_ranking('top_salesman_by_country', ARRAY['country'], interval '30 days',
                            item => 'seller_id', item_label => 'seller_name',
                            calendar => false);

SELECT pg_catalog.pg_extension_config_dump('kappa.rankings', $$WHERE name NOT IN ('top_sales_by_city', 'top_salesman_by_country')$$);
-- (and where its ids are: restored rankings keep theirs, and the next one
-- made after a restore must not take one of them; 0.1.5)
SELECT pg_catalog.pg_extension_config_dump('kappa.rankings_id_seq', '');

-- -------------------------------------------------------------------------
-- Privileges
-- -------------------------------------------------------------------------
GRANT SELECT ON kappa.rankings, kappa.ranking_definitions, kappa.ranking_windows,
                kappa.ranking_results, kappa.ranking_state, kappa.late_events,
                kappa.top_sales_by_city, kappa.top_salesman_by_country,
                kappa.payments, kappa.payment_history, kappa.sales_enriched
    TO kappa_reader;
-- (what was refused and why, without the record itself: see kappa.dead_letters)
GRANT SELECT (id, source, topic, partition, "offset", file, line, error, received_at)
    ON kappa.dead_letters TO kappa_admin;
REVOKE ALL ON FUNCTION kappa.stream_worker_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kappa.stream_worker_status() TO pg_monitor, kappa_reader;
GRANT SELECT ON kappa.stat_consumers, kappa.stat_rankings, kappa.stream_offsets TO pg_monitor, kappa_reader;
REVOKE ALL ON FUNCTION kappa.create_ranking, kappa.drop_ranking(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kappa.create_ranking, kappa.drop_ranking(text) TO kappa_admin;
REVOKE ALL ON FUNCTION kappa.ranking, kappa.top_sales_by_city, kappa.top_salesmen_by_country,
                       kappa.ranking_window, kappa.ranking_results_topic FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kappa.ranking, kappa.top_sales_by_city, kappa.top_salesmen_by_country,
                          kappa.ranking_window, kappa.ranking_results_topic TO kappa_reader;
