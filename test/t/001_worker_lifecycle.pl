# The library refuses to run unless preloaded; the CDC publisher worker
# follows reloads, is restarted after being killed, and never takes the
# server down.
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
done_testing();
