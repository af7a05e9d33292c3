-- Ranking definitions, their validation, and the SQL surface over
-- hand-built results.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_kappa;	-- (also when run on its own)
RESET client_min_messages;
SET timezone = 'UTC';

SELECT name, input, source_topic, group_by, item, item_label, measure, measure_field,
       window_size, window_kind, time_zone, grace, confirmed_only, results_topic, row_memory
  FROM kappa.ranking_definitions ORDER BY name;

-- Validation
SELECT kappa.create_ranking('Bad Name', ARRAY['city'], '1 day');
SELECT kappa.create_ranking('top_sales_by_city', ARRAY['city'], '1 day');
SELECT kappa.create_ranking('no_groups', ARRAY[]::text[], '1 day');
-- (0.1.5: these were taken, and every stream worker then failed loading them)
SELECT kappa.create_ranking('null_group', ARRAY['city', NULL], '1 day');
SELECT kappa.create_ranking('square_groups', ARRAY[['city', 'store_id']], '1 day');
SELECT kappa.create_ranking('null_time', ARRAY['city'], '1 day', event_time_field => NULL);
SELECT kappa.create_ranking('null_confirmed', ARRAY['city'], '1 day', confirmed_only => NULL);
SELECT kappa.create_ranking('bad_field', ARRAY['city; drop table x'], '1 day');
SELECT kappa.create_ranking('bad_measure', ARRAY['city'], '1 day', measure => 'avg');
SELECT kappa.create_ranking('sum_without_field', ARRAY['city'], '1 day', measure_field => NULL);
SELECT kappa.create_ranking('bad_window', ARRAY['city'], '1 month', calendar => false);
SELECT kappa.create_ranking('bad_zone', ARRAY['city'], '1 day', calendar => true, time_zone => 'Nowhere/Atlantis');
-- a fixed window keeps its zone too: refused the same way (0.1.5)
SELECT kappa.create_ranking('bad_zone', ARRAY['city'], '1 day', calendar => false, time_zone => 'Nowhere/Atlantis');
SELECT kappa.create_ranking('bad_grace', ARRAY['city'], '1 day', grace => '-1 minute');
SELECT kappa.create_ranking('bad_topic', ARRAY['city'], '1 day', results_topic => 'a topic');
SELECT kappa.create_ranking('label_only', ARRAY['city'], '1 day', item_label => 'seller_name');
SELECT kappa.create_ranking('sink_without_topic', ARRAY['city'], '1 day', input => 'results');
-- a sink produces nothing, so it has no results topic
SELECT kappa.create_ranking('sink_producing', ARRAY['city'], '1 day', input => 'results',
                            source_topic => 'other-results', results_topic => 'more-results');

-- Without row memory: only for events, never confirmed-only, and every
-- ranking of a topic the same way.
SELECT kappa.create_ranking('sink_no_memory', ARRAY['city'], '1 day', input => 'results',
                            source_topic => 'other-results', row_memory => false);
SELECT kappa.create_ranking('confirmed_no_memory', ARRAY['city'], '1 day',
                            source_topic => 'cdc-sales', confirmed_only => true, row_memory => false);
SELECT kappa.create_ranking('null_memory', ARRAY['city'], '1 day', row_memory => NULL);
SELECT kappa.create_ranking('mixed_memory', ARRAY['city'], '1 day', row_memory => false);
SELECT name, source_topic, row_memory
  FROM kappa.create_ranking('cdc_by_city', ARRAY['city'], '1 day', source_topic => 'cdc-sales',
                            row_memory => false);
SELECT kappa.create_ranking('cdc_by_store', ARRAY['store_id'], '1 day', source_topic => 'cdc-sales');
SELECT name, row_memory
  FROM kappa.create_ranking('cdc_by_country', ARRAY['country'], '30 days', source_topic => 'cdc-sales',
                            row_memory => false);
SELECT kappa.drop_ranking('cdc_by_city'), kappa.drop_ranking('cdc_by_country');

-- A ranking of its own: count of sales per store and city, weekly in Madrid time.
SELECT name, group_by, measure, measure_field, window_size, calendar, time_zone
  FROM kappa.create_ranking('busiest_stores', ARRAY['city', 'store_id'], '1 week',
                            measure => 'count', calendar => true, time_zone => 'Europe/Madrid',
                            grace => '1 hour', results_topic => 'busiest-stores');
SELECT * FROM kappa.ranking_window('busiest_stores', '2026-11-21 10:00+00');
SELECT kappa.drop_ranking('busiest_stores');
SELECT kappa.drop_ranking('busiest_stores');

-- Hand-built results for the day of 2026-11-21 and the 30-day window around it.
INSERT INTO kappa.ranking_windows VALUES
  ('top_sales_by_city', '2026-11-21 00:00+00', '2026-11-22 00:00+00', false, NULL, NULL),
  ('top_sales_by_city', '2026-11-20 00:00+00', '2026-11-21 00:00+00', true, now(), NULL),
  ('top_salesman_by_country', '2026-11-03 00:00+00', '2026-12-03 00:00+00', false, NULL, NULL);
INSERT INTO kappa.ranking_results (ranking, window_start, window_end, group_values, total, sale_count, is_final) VALUES
  ('top_sales_by_city', '2026-11-21 00:00+00', '2026-11-22 00:00+00', '{Madrid}', 1234.50, 17, false),
  ('top_sales_by_city', '2026-11-21 00:00+00', '2026-11-22 00:00+00', '{Barcelona}', 999.99, 3, false),
  ('top_sales_by_city', '2026-11-21 00:00+00', '2026-11-22 00:00+00', '{Lisboa}', 999.99, 5, false),
  ('top_sales_by_city', '2026-11-21 00:00+00', '2026-11-22 00:00+00', '{Porto}', 999.99, 5, false),
  ('top_sales_by_city', '2026-11-21 00:00+00', '2026-11-22 00:00+00', '{Paris}', 10.00, 1, false),
  ('top_sales_by_city', '2026-11-20 00:00+00', '2026-11-21 00:00+00', '{Madrid}', 5.00, 1, true);
INSERT INTO kappa.ranking_results (ranking, window_start, window_end, group_values, item, item_label, total, sale_count) VALUES
  ('top_salesman_by_country', '2026-11-03 00:00+00', '2026-12-03 00:00+00', '{ES}', 'S-17', 'Ana Ruiz', 500.00, 4),
  ('top_salesman_by_country', '2026-11-03 00:00+00', '2026-12-03 00:00+00', '{ES}', 'S-22', 'Jordi Puig', 700.00, 2),
  ('top_salesman_by_country', '2026-11-03 00:00+00', '2026-12-03 00:00+00', '{ES}', 'S-40', 'Eva Gil', 700.00, 2),
  ('top_salesman_by_country', '2026-11-03 00:00+00', '2026-12-03 00:00+00', '{PT}', 'S-31', 'João Sá', 249.00, 1);

-- Ties: total, then sale count, then name.
SELECT * FROM kappa.top_sales_by_city('2026-11-21 12:00+00');
SELECT * FROM kappa.top_sales_by_city('2026-11-21 12:00+00', n => 2);
SELECT * FROM kappa.top_sales_by_city('2026-11-20 12:00+00');
SELECT * FROM kappa.top_sales_by_city('2026-11-25 12:00+00');
SELECT * FROM kappa.top_sales_by_city(n => 0);
SELECT * FROM kappa.top_salesmen_by_country('ES', '2026-11-21 12:00+00', n => 2);
SELECT * FROM kappa.top_salesmen_by_country(at => '2026-11-21 12:00+00', n => 1);
SELECT rank, group_values, item, total FROM kappa.ranking('top_salesman_by_country', '2026-11-21 12:00+00', 3);
SELECT * FROM kappa.top_sales_by_city ORDER BY window_start, rank, city;
SELECT country, rank, seller_id, seller_name, total_sales FROM kappa.top_salesman_by_country ORDER BY country, rank, seller_id;

-- Top n in each group, against the same ranking computed over every row
-- with a window function: 300 items in 12 groups of two values, with many
-- ties, and rows of another window and of another ranking that must not
-- show.  Same rows, in the same order (by group, then rank).
SELECT name FROM kappa.create_ranking('store_sellers', ARRAY['city', 'store_id'], '1 day', item => 'seller_id');
INSERT INTO kappa.ranking_windows VALUES
  ('store_sellers', '2026-11-21 00:00+00', '2026-11-22 00:00+00', false, NULL, NULL),
  ('store_sellers', '2026-11-22 00:00+00', '2026-11-23 00:00+00', false, NULL, NULL);
INSERT INTO kappa.ranking_results (ranking, window_start, window_end, group_values, item, total, sale_count)
SELECT 'store_sellers', v.d, v.d + interval '1 day', ARRAY['City ' || (i % 3), 'ST-' || (i % 4)], 'S-' || i,
       (i % 7) * 10.5 + CASE WHEN v.d > '2026-11-21 00:00+00' THEN 1000 ELSE 0 END, 1 + i % 2
  FROM generate_series(1, 300) i,
       (VALUES (timestamptz '2026-11-21 00:00+00'), ('2026-11-22 00:00+00')) v(d)
 WHERE v.d = '2026-11-21 00:00+00' OR i % 5 = 0;
CREATE TEMP TABLE all_ranked AS
SELECT row_number() OVER (PARTITION BY r.group_values
                          ORDER BY r.total DESC, r.sale_count DESC, r.item) AS rank,
       r.group_values, r.item, r.total, r.sale_count
  FROM kappa.ranking_results r
 WHERE r.ranking = 'store_sellers' AND r.window_start = '2026-11-21 00:00+00';
SELECT t.n, count(*) AS rows,
       array_agg(ROW(f.rank, f.group_values, f.item, f.total, f.sale_count)::text ORDER BY f.o)
       = (SELECT array_agg(ROW(e.rank, e.group_values, e.item, e.total, e.sale_count)::text
                           ORDER BY e.group_values, e.rank)
            FROM all_ranked e WHERE e.rank <= t.n) AS same_as_every_row_ranked
  FROM (VALUES (1), (3), (30), (1000)) t(n),
       kappa.ranking('store_sellers', '2026-11-21 12:00+00', t.n) WITH ORDINALITY f(rank, window_start, window_end, group_values, item, item_label, total, sale_count, is_final, o)
 GROUP BY t.n ORDER BY t.n;
SELECT count(*) FROM kappa.ranking('store_sellers', '2026-11-23 12:00+00', 3);
SELECT kappa.drop_ranking('store_sellers');

-- Readers read, admins define, others do neither.
CREATE ROLE kappa_test_reader IN ROLE kappa_reader;
CREATE ROLE kappa_test_admin IN ROLE kappa_admin;
CREATE ROLE kappa_test_nobody;
SET ROLE kappa_test_reader;
SELECT city, rank FROM kappa.top_sales_by_city('2026-11-21 12:00+00', 1);
SELECT kappa.create_ranking('by_reader', ARRAY['city'], '1 day');
SET ROLE kappa_test_admin;
SELECT name FROM kappa.create_ranking('by_admin', ARRAY['city'], '1 day');
SELECT kappa.drop_ranking('by_admin');
SET ROLE kappa_test_nobody;
SELECT * FROM kappa.top_sales_by_city('2026-11-21 12:00+00', 1);
RESET ROLE;
-- a reader sees the reference columns of a remembered sale, not the other
-- columns of the table it was published from (0.1.5: the whole row)
INSERT INTO kappa.stream_rows (topic, key, row_data, counted) VALUES
    ('sales-events', 'e1', '{"sale_id":"e1","city":"Madrid","amount":"1.00","customer_email":"ana@example.com","card_last4":"4242"}', '{}');
SET ROLE kappa_test_reader;
SELECT sale_id, sale, payment_status FROM kappa.sales_enriched;
RESET ROLE;
DELETE FROM kappa.stream_rows;
-- pg_monitor and admins see what was refused and why, not the record (0.1.5:
-- pg_monitor read raw, admins nothing)
INSERT INTO kappa.dead_letters (source, topic, partition, "offset", raw, error)
    VALUES ('stream', 'sales-events', 0, 7, '{"card_number":"4111111111111111"}', 'unknown op');
CREATE ROLE kappa_test_monitor IN ROLE pg_monitor;
SET ROLE kappa_test_monitor;
SELECT source, topic, "offset", error FROM kappa.dead_letters;
SELECT raw FROM kappa.dead_letters;
SET ROLE kappa_test_admin;
SELECT source, topic, "offset", error FROM kappa.dead_letters;
SELECT * FROM kappa.dead_letters;
RESET ROLE;
DROP ROLE kappa_test_monitor;
DELETE FROM kappa.dead_letters;
DROP ROLE kappa_test_reader, kappa_test_admin, kappa_test_nobody;

DELETE FROM kappa.ranking_windows;
