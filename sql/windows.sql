-- Window arithmetic, checked against PostgreSQL's own date arithmetic.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_kappa;	-- (also when run on its own)
RESET client_min_messages;
SET timezone = 'UTC';

-- Fixed windows, 30 days aligned to the Unix epoch (like Kafka Streams).
SELECT * FROM kappa.window_bounds('2026-11-21 10:15:03.12+00', '30 days', false);
-- an independent expectation over four years of hours: 0 mismatches
SELECT count(*) AS mismatches
  FROM generate_series('2024-01-01 00:00+00'::timestamptz, '2027-12-31 23:00+00', '7 hours') ts,
       kappa.window_bounds(ts, '30 days', false) w
 WHERE w.window_start <> to_timestamp(floor(extract(epoch FROM ts) / (30 * 86400)) * 30 * 86400)
    OR w.window_end <> w.window_start + interval '30 days';
-- before the origin: windows count backwards (floor, not truncation)
SELECT * FROM kappa.window_bounds('1969-12-31 23:59:59+00', '1 day', false);
SELECT * FROM kappa.window_bounds('2026-01-01 00:00+00', '1 hour', false, '2026-01-01 00:30+00');
-- exactly on a boundary: the window that starts there (half-open windows)
SELECT * FROM kappa.window_bounds('2026-11-20 00:00:00+00', '1 day', false);
SELECT * FROM kappa.window_bounds('2026-11-19 23:59:59.999999+00', '1 day', false);

-- Calendar days in UTC and in zones with daylight saving time.
SELECT * FROM kappa.window_bounds('2026-11-21 23:59:59+00', '1 day', true, NULL, 'UTC');
SELECT * FROM kappa.window_bounds('2026-03-29 12:00+00', '1 day', true, NULL, 'Europe/Madrid');
SELECT * FROM kappa.window_bounds('2026-10-25 12:00+00', '1 day', true, NULL, 'Europe/Madrid');
SELECT w.window_end - w.window_start AS spring_day
  FROM kappa.window_bounds('2026-03-29 12:00+00', '1 day', true, NULL, 'Europe/Madrid') w;
SELECT w.window_end - w.window_start AS autumn_day
  FROM kappa.window_bounds('2026-10-25 12:00+00', '1 day', true, NULL, 'Europe/Madrid') w;
SELECT tz, count(*) AS checked,
       count(*) FILTER (WHERE w.window_start <> (date_trunc('day', ts AT TIME ZONE tz)) AT TIME ZONE tz
                           OR w.window_end <> (date_trunc('day', ts AT TIME ZONE tz) + interval '1 day') AT TIME ZONE tz)
         AS mismatches
  FROM unnest(ARRAY['UTC', 'Europe/Madrid', 'America/New_York', 'Australia/Lord_Howe',
                    'Asia/Kolkata', 'America/Santiago']) tz,
       generate_series('2026-01-01 00:00+00'::timestamptz, '2027-01-01 00:00+00', '47 minutes') ts,
       kappa.window_bounds(ts, '1 day', true, NULL, tz) w
 GROUP BY tz ORDER BY tz;

-- Where clocks go back across midnight (Cuba, first Sunday of November:
-- 01:00 daylight time becomes 00:00 again), midnight happens twice and the
-- day starts at the first: 2025-11-02 is 25 hours long, and 00:30 of its
-- first hour (04:30 UTC) is in it.
SELECT * FROM kappa.window_bounds('2025-11-02 04:30+00', '1 day', true, NULL, 'America/Havana');
SELECT * FROM kappa.window_bounds('2025-11-01 12:00+00', '1 day', true, NULL, 'America/Havana');
-- Every time lies in its window, two years of Havana's days (both ways
-- across midnight: skipped in March, repeated in November).
SELECT count(*) AS checked,
       count(*) FILTER (WHERE NOT (w.window_start <= ts AND ts < w.window_end)) AS outside,
       count(*) FILTER (WHERE (w.window_start AT TIME ZONE 'America/Havana')::date <> (ts AT TIME ZONE 'America/Havana')::date) AS other_day
  FROM generate_series('2025-01-01 00:00+00'::timestamptz, '2027-01-01 00:00+00', '13 minutes') ts,
       kappa.window_bounds(ts, '1 day', true, NULL, 'America/Havana') w;
-- Clocks that went back to the day before (St. John's, 2010-11-07: 00:01
-- daylight time became 23:01 of the 6th): the 7th starts at its first
-- midnight (02:30 UTC), and the hour that reads the 6th again after it is in
-- the 7th (before 0.1.5, 02:33 UTC got the 6th, which had ended).
SELECT ts, w.*
  FROM unnest(ARRAY['2010-11-07 02:29+00', '2010-11-07 02:30+00', '2010-11-07 02:33+00',
                    '2010-11-07 03:31+00']::timestamptz[]) ts,
       kappa.window_bounds(ts, '1 day', true, NULL, 'America/St_Johns') w;
SELECT count(*) AS checked,
       count(*) FILTER (WHERE NOT (w.window_start <= ts AND ts < w.window_end)) AS outside
  FROM generate_series('2009-01-01 00:00+00'::timestamptz, '2011-12-31 00:00+00', '11 minutes') ts,
       kappa.window_bounds(ts, '1 day', true, NULL, 'America/St_Johns') w;
-- Clocks that jumped across midnight (Toronto, 1919-03-31: 23:30 became
-- 00:30): the day starts at the jump.
SELECT * FROM kappa.window_bounds('1919-03-31 04:30+00', '1 day', true, NULL, 'America/Toronto');
SELECT count(*) AS checked,
       count(*) FILTER (WHERE NOT (w.window_start <= ts AND ts < w.window_end)) AS outside
  FROM generate_series('1919-03-29 00:00+00'::timestamptz, '1919-04-02 00:00+00', '7 minutes') ts,
       kappa.window_bounds(ts, '1 day', true, NULL, 'America/Toronto') w;

-- Calendar weeks start on the origin's weekday (default: Monday 1970-01-05).
SELECT * FROM kappa.window_bounds('2026-11-21 10:00+00', '1 week', true, NULL, 'UTC');
SELECT count(*) AS mismatches
  FROM generate_series('2025-12-01 00:00+00'::timestamptz, '2027-02-01 00:00+00', '5 hours') ts,
       kappa.window_bounds(ts, '1 week', true, NULL, 'Europe/Madrid') w
 WHERE w.window_start <> date_trunc('week', ts AT TIME ZONE 'Europe/Madrid') AT TIME ZONE 'Europe/Madrid';

-- Calendar months: month ends, leap days, and multiples of months.
SELECT * FROM kappa.window_bounds('2024-02-29 23:30+00', '1 month', true, NULL, 'UTC');
SELECT * FROM kappa.window_bounds('2026-01-31 23:30+00', '1 month', true, NULL, 'Europe/Madrid');
SELECT * FROM kappa.window_bounds('2026-11-21 10:00+00', '3 months', true, '2026-01-01 00:00+00', 'UTC');
SELECT * FROM kappa.window_bounds('1969-12-15 00:00+00', '1 month');   -- month sizes imply calendar
SELECT count(*) AS mismatches
  FROM generate_series('2023-12-01 00:00+00'::timestamptz, '2027-02-01 00:00+00', '13 hours') ts,
       kappa.window_bounds(ts, '1 month', true, NULL, 'America/New_York') w
 WHERE w.window_start <> date_trunc('month', ts AT TIME ZONE 'America/New_York') AT TIME ZONE 'America/New_York'
    OR w.window_end <> (date_trunc('month', ts AT TIME ZONE 'America/New_York') + interval '1 month') AT TIME ZONE 'America/New_York';

-- No window for infinite times.
SELECT * FROM kappa.window_bounds('infinity', '1 day', true, NULL, 'UTC');
SELECT * FROM kappa.window_bounds('-infinity', '30 days', false);
-- near the end of the range: no window rather than a wrong one
SELECT * FROM kappa.window_bounds('294276-06-01 00:00+00', '30 days', false);
SELECT * FROM kappa.window_bounds('294276-06-01 00:00+00', '1 day', false, '4700-01-01 00:00+00 BC');

-- What is not a window.
SELECT * FROM kappa.window_bounds(now(), '1 month', false);
SELECT * FROM kappa.window_bounds(now(), '1 day 2 hours', true, NULL, 'UTC');
SELECT * FROM kappa.window_bounds(now(), '-1 day', false);
SELECT * FROM kappa.window_bounds(now(), '0', false);
SELECT * FROM kappa.window_bounds(now(), '1 day', true, NULL, 'Mars/Olympus_Mons');
SELECT * FROM kappa.window_bounds(now(), '1 day', false, 'infinity');

-- The windows of the shipped rankings.
SELECT * FROM kappa.ranking_window('top_sales_by_city', '2026-11-21 10:15:03+00');
SELECT * FROM kappa.ranking_window('top_salesman_by_country', '2026-11-21 10:15:03+00');
SELECT * FROM kappa.ranking_window('no_such_ranking', now());
