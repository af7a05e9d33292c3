-- CSV inbox: settings, their check hooks, who may see the inbox path, and
-- the ledger's rules.  (The worker itself is tested in test/t/030_csv_inbox.pl.)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_kappa;
RESET client_min_messages;

SELECT name, setting, unit, context
  FROM pg_settings
 WHERE name LIKE 'kappa.csv%'
 ORDER BY name;

-- the inbox is an absolute path that says where it leads
ALTER SYSTEM SET kappa.csv_inbox = 'relative/inbox';
ALTER SYSTEM SET kappa.csv_inbox = '/srv/shop/../etc';
ALTER SYSTEM SET kappa.csv_inbox = '/srv/./shop';
ALTER SYSTEM SET kappa.csv_inbox = E'/srv/sh\nop';
-- the pattern matches names inside the inbox, never dot-files
ALTER SYSTEM SET kappa.csv_pattern = 'in/sales_*.csv';
ALTER SYSTEM SET kappa.csv_pattern = '.sales_*.csv';
ALTER SYSTEM SET kappa.csv_pattern = '';
ALTER SYSTEM SET kappa.csv_poll_interval = 0;
ALTER SYSTEM SET kappa.csv_stable_ms = -1;
ALTER SYSTEM SET kappa.csv_date_order = 'ydm';
-- good values are accepted (and reset again)
ALTER SYSTEM SET kappa.csv_inbox = '/srv/shop/inbox';
ALTER SYSTEM SET kappa.csv_inbox = '/srv/shop/..inbox..';
ALTER SYSTEM SET kappa.csv_pattern = 'store-*-[0-9]*.csv';
ALTER SYSTEM SET kappa.csv_stable_ms = '5s';
ALTER SYSTEM SET kappa.csv_date_order = 'DMY';
ALTER SYSTEM RESET kappa.csv_inbox;
ALTER SYSTEM RESET kappa.csv_pattern;
ALTER SYSTEM RESET kappa.csv_stable_ms;
ALTER SYSTEM RESET kappa.csv_date_order;

-- only superusers (and pg_read_all_settings) see the inbox path
CREATE ROLE kappa_csv_user;
SET ROLE kappa_csv_user;
SHOW kappa.csv_inbox;
SELECT current_setting('kappa.csv_inbox');
SELECT count(*) AS listed FROM pg_settings WHERE name = 'kappa.csv_inbox';
SHOW kappa.csv_pattern;
-- (a reload-only setting: SET is refused to everyone; ALTER SYSTEM is what counts)
ALTER SYSTEM SET kappa.csv_inbox = '/etc';
SELECT count(*) FROM kappa.csv_files;
RESET ROLE;
DROP ROLE kappa_csv_user;

-- the ledger: a content hash is a SHA-256, and content is processed once
\set VERBOSITY terse
INSERT INTO kappa.csv_files (name, sha256, size, state)
VALUES ('sales_1.csv', 'not-a-hash', 1, 'processed');
INSERT INTO kappa.csv_files (name, sha256, size, state)
VALUES ('sales_1.csv', repeat('a', 64), 1, 'lost');
INSERT INTO kappa.csv_files (name, sha256, size, state)
VALUES ('sales_1.csv', repeat('a', 64), 10, 'processed');
INSERT INTO kappa.csv_files (name, sha256, size, state)
VALUES ('sales_2.csv', repeat('a', 64), 10, 'processed');
INSERT INTO kappa.csv_files (name, sha256, size, state, duplicate_of)
SELECT 'sales_2.csv', repeat('a', 64), 10, 'duplicate', id FROM kappa.csv_files;
SELECT name, state, rows_ingested, attempts, duplicate_of IS NOT NULL AS dup
  FROM kappa.csv_files ORDER BY id;
DELETE FROM kappa.csv_files;
\set VERBOSITY default
