# The library refuses to run unless preloaded; the CDC publisher worker
# follows reloads, is restarted after being killed, and never takes the
# server down; the workers wait quietly for a kappa.database that does not
# exist.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

# Without shared_preload_libraries: a clear error with a hint.
my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->start;
my ($ret, $stdout, $stderr) = $plain->psql('postgres', 'CREATE EXTENSION pg_kappa');
isnt($ret, 0, 'CREATE EXTENSION fails without preloading');
like($stderr, qr/pg_kappa must be loaded via shared_preload_libraries/, 'error says why');
like($stderr, qr/HINT:  Add pg_kappa to shared_preload_libraries/, 'hint says how');
$plain->stop;

# Preloaded, no broker running: the worker waits for something to publish.
my $node = kappa_node('lifecycle', undef, conf => 'restart_after_crash = on');
wait_until(sub {
	$node->safe_psql('shop', 'SELECT state FROM kappa.cdc_status') eq 'waiting for kappa.publish_table()'
}, 'publisher waiting for a published table');
my $pid = $node->safe_psql('shop', 'SELECT pid FROM kappa.cdc_status');
ok($pid > 0, 'publisher worker runs');
is($node->safe_psql('shop',
	"SELECT backend_type FROM pg_stat_activity WHERE pid = $pid"),
	'pg_kappa cdc publisher', 'it shows in pg_stat_activity under its own type');

# A reload switches it off and on again, without a restart.
$node->append_conf('postgresql.conf', 'kappa.cdc_enabled = off');
$node->reload;
wait_until(sub {
	$node->safe_psql('shop', 'SELECT state FROM kappa.cdc_status') =~ /^disabled/
}, 'publisher disabled by reload');
is($node->safe_psql('shop', 'SELECT pid FROM kappa.cdc_status'), $pid, 'same process after reload');
$node->append_conf('postgresql.conf', 'kappa.cdc_enabled = on');
$node->reload;
wait_until(sub {
	$node->safe_psql('shop', 'SELECT state FROM kappa.cdc_status') eq 'waiting for kappa.publish_table()'
}, 'publisher enabled again by reload');

# SIGTERM ends it promptly; the postmaster restarts it.
$node->safe_psql('shop', "SELECT pg_terminate_backend($pid)");
my $newpid = wait_until(sub {
	my $p = $node->safe_psql('shop', 'SELECT pid FROM kappa.cdc_status');
	return ($p ne '' && $p != $pid) ? $p : 0;
}, 'publisher restarted');
isnt($newpid, $pid, 'a new publisher process took over');
is($node->safe_psql('shop', 'SELECT 1'), '1', 'server kept running');

# SIGKILL of the worker: the postmaster resets shared memory (as for any
# crashed backend) and comes back; the worker is started again.
kill 'KILL', $newpid;
wait_until(sub {
	my ($r, $out) = $node->psql('shop', 'SELECT pid FROM kappa.cdc_status');
	return $r == 0 && $out ne '' && $out != $newpid;
}, 'server and publisher back after the worker was killed');
pass('server recovered from a killed worker');

$node->stop;

# kappa.database names a database that does not exist yet: each worker's
# first connection fails (FATAL, once each), then the workers wait quietly
# connected to no database, one WARNING says why, and they start on the
# database once it is created.  Dropped again (WITH (FORCE) ends the
# workers' sessions), the same.
my $later = kappa_node('nodb', undef, conf => "kappa.database = 'shop_later'");
my $workers = 4;	# publisher, soap poller, csv inbox, one stream worker
my $count = sub {
	my ($re) = @_;
	my @hits = slurp_file($later->logfile) =~ /$re/g;
	return scalar @hits;
};
my $fatal = qr/FATAL:  database "shop_later" does not exist/;
my $warning = qr/WARNING:  pg_kappa workers cannot connect to database "shop_later"/;
wait_until(sub { $count->($warning) == 1 }, 'one warning for the missing database');
like(slurp_file($later->logfile),
	qr/DETAIL:  Database "shop_later" \(kappa.database\) does not exist; the workers wait for it and look again every second.\n.*HINT:  Create the database and run CREATE EXTENSION pg_kappa in it, or set kappa.database in postgresql.conf and restart the server./,
	'the warning says what and how to fix it');
wait_until(sub { $count->($fatal) >= $workers }, 'each worker to fail to connect once');
# three restart intervals (kappa.worker_restart_interval = 1) later
sleep 3;
is($count->($fatal), $workers, 'each worker failed to connect once, not at every restart');
is($count->($warning), 1, 'and the warning was not repeated');

$later->safe_psql('postgres', 'CREATE DATABASE shop_later');
$later->safe_psql('shop_later', 'CREATE EXTENSION pg_kappa');
wait_until(sub {
	$later->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop_later' AND backend_type LIKE 'pg_kappa %'") == $workers
}, 'the workers started on the database once it was created');
wait_until(sub {
	$later->safe_psql('shop_later', 'SELECT state FROM kappa.cdc_status') eq 'waiting for kappa.publish_table()'
}, 'the publisher runs there');
is($count->($fatal), $workers, 'no further failed connection on the way');

$later->safe_psql('postgres', 'DROP DATABASE shop_later WITH (FORCE)');
wait_until(sub { $count->($warning) == 2 }, 'dropped: one warning again');
wait_until(sub { $count->($fatal) >= 2 * $workers }, 'each worker to fail to connect after the drop');
sleep 3;	# three restart intervals: no more than that
is($count->($fatal), 2 * $workers, 'one failed connection per worker after the drop');
is($count->($warning), 2, 'and the warning was not repeated');
is($later->safe_psql('postgres', 'SELECT 1'), '1', 'server kept running');

# After a restart, before any session has connected to a database: the
# shared catalogs' relcache init file is gone then, and looking the
# database up through pg_database's index failed (FATAL at every restart).
$later->restart;
# no session meanwhile: slurp_file reads the log
wait_until(sub { $count->($warning) == 3 && $count->($fatal) >= 3 * $workers },
	'after a restart: the warning and each worker\'s failed connection');
sleep 3;	# three restart intervals: no more than that
is($count->($warning), 3, 'after a restart: the warning once more');
is(scalar(() = slurp_file($later->logfile) =~ /cannot read pg_class without having selected a database/g), 0,
	'the wait looks the database up without needing a database');
is($count->($fatal), 3 * $workers, 'one failed connection per worker after the restart, no more');
$later->stop;

# More stream workers than max_worker_processes leaves room for (8 with 3
# + 5 of ours and the logical replication launcher's): said at
# start-up, and the sources are registered first, so the ones left out
# are stream workers (0.1.5; before, the CSV inbox and the SOAP poller were
# the ones PostgreSQL left out, silently).
my $crowded = kappa_node('crowded', undef, conf => q{
max_worker_processes = 8
kappa.stream_workers = 5
});
like(slurp_file($crowded->logfile),
	qr/WARNING:  pg_kappa needs 8 background workers, more than max_worker_processes \(8\) leaves\n.*DETAIL:  .*; 1 other background worker\(s\) were registered before them\.\n.*HINT:  Raise max_worker_processes/,
	'the shortfall is logged with what to do, counting the logical replication launcher');
# (the logical replication launcher takes one of the 8)
wait_until(sub { $crowded->safe_psql('shop', q{
SELECT count(DISTINCT backend_type) FROM pg_stat_activity WHERE backend_type LIKE 'pg_kappa %'}) == 4 },
	'the workers that fit to start');
is($crowded->safe_psql('shop', q{
SELECT string_agg(backend_type, ',' ORDER BY backend_type COLLATE "C") FROM (
  SELECT DISTINCT backend_type FROM pg_stat_activity WHERE backend_type LIKE 'pg_kappa %') t}),
	'pg_kappa cdc publisher,pg_kappa csv inbox,pg_kappa soap poller,pg_kappa stream worker',
	'every source runs, and the stream workers that fit');
$crowded->stop;

done_testing();
