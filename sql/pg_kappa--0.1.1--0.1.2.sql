-- pg_kappa 0.1.1 -> 0.1.2
\echo Use "ALTER EXTENSION pg_kappa UPDATE TO '0.1.2'" to load this file. \quit

-- Rankings without row memory (docs/rankings.md, "Without row memory"):
-- updates and deletes are undone from the event's "before" row, replays are
-- recognised by the partition's latest CDC position.
ALTER TABLE kappa.rankings ADD COLUMN row_memory boolean NOT NULL DEFAULT true;
ALTER TABLE kappa.stream_offsets ADD COLUMN position_lsn pg_lsn, ADD COLUMN position_seq bigint;

DROP FUNCTION kappa.create_ranking(text, text[], interval, text, text, text, text, boolean,
                                   timestamptz, text, interval, boolean, text, text, text, text);
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

REVOKE ALL ON FUNCTION kappa.create_ranking FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kappa.create_ranking TO kappa_admin;

CREATE OR REPLACE VIEW kappa.ranking_definitions AS
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
