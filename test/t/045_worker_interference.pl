# What other users of the database can do to the workers, and must not be
# able to: hold the extension's locks from SQL, and stop every worker with
# per-database settings.
#
# 1. The extension's locks were advisory lock tags that
#    pg_advisory_lock(1801547888, n), executable by PUBLIC, also makes: an
#    unprivileged role holding them stopped every stream batch (n = 3),
#    window finalisation (4), forgetting (5) and kappa.publish_table (1).
# 2. ALTER DATABASE ... SET default_transaction_read_only, lock_timeout,
#    role or session_replication_role applied to the workers' sessions too:
#    they failed in a loop while the slot held WAL (statement_timeout and
#    idle_in_transaction_session_timeout, set here too, are armed by client
#    backends only).
# 3. group.id, auto.offset.reset and isolation.level in kappa.kafka_options
#    were silently overridden by the stream workers: now each says so.
#    enable.idempotence=false and acks=1 there took from the producers what
#    the slot's confirmation rests on (0.1.5): now they are overridden, and
#    each producer says so.
# With both in place, sales inserted into a published table must reach the
# ranking, with exactly the totals computed here.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [ 'sales-events:2', 'payment-confirmations:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
my $node = kappa_node('interference', $broker, conf => q{
kappa.idle_timeout = '1h'
kappa.default_grace = '3650d'
kappa.stream_batch_ms = 20
kappa.kafka_options = 'isolation.level=read_uncommitted; linger.ms=5; enable.idempotence=false; acks=1'
});
$node->safe_psql('shop', sales_table_sql());
$node->safe_psql('postgres', 'CREATE ROLE mallory LOGIN');

# Settings any owner of the database may make (the last one needs a
# superuser; it stands for postgresql.conf).  The test's own sessions set
# them back at connection (PGOPTIONS outranks ALTER DATABASE).
$ENV{PGOPTIONS} = join(' ', map { "-c $_" } qw(default_transaction_read_only=off statement_timeout=0
	lock_timeout=0 idle_in_transaction_session_timeout=0 role=none session_replication_role=origin));
$node->safe_psql('shop', $_) for (
	q{ALTER DATABASE shop SET default_transaction_read_only = on},
	q{ALTER DATABASE shop SET statement_timeout = '1ms'},
	q{ALTER DATABASE shop SET lock_timeout = '1ms'},
	q{ALTER DATABASE shop SET idle_in_transaction_session_timeout = '1ms'},
	q{ALTER DATABASE shop SET default_transaction_isolation = 'serializable'},
	q{ALTER DATABASE shop SET session_replication_role = 'replica'},
	q{ALTER DATABASE shop SET role = 'mallory'});
$node->restart;

# mallory holds every lock SQL can make with the extension's key, both ways
my $mallory = do {
	# (session_replication_role is a superuser's to set)
	local $ENV{PGOPTIONS} = $ENV{PGOPTIONS} =~ s/ -c session_replication_role=origin//r;
	$node->background_psql('shop', on_error_stop => 1, extra_params => [ '-U', 'mallory' ]);
};
for my $n (1 .. 6)
{
	my $int8 = 1801547888 * 2**32 + $n;
	$mallory->query_safe("SELECT pg_advisory_lock(1801547888, $n), pg_advisory_lock($int8)");
}
is($mallory->query_safe(q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted}),
	'12', 'mallory holds twelve advisory locks');

$node->safe_psql('shop', "SELECT kappa.publish_table('sales')", timeout => 60);
pass('publish_table does not wait for mallory');

# ten sales over three cities on one day
my @sales = map { [ $_, ('Madrid', 'Vigo', 'Soria')[ $_ % 3 ], sprintf('%d.%02d', $_, $_ * 7 % 100) ] } 1 .. 10;
my %total;
my %count;
for my $s (@sales)
{
	my ($cents) = $s->[2] =~ /^(\d+)\.(\d+)$/ ? ($1 * 100 + $2) : die;
	$total{ $s->[1] } += $cents;
	$count{ $s->[1] }++;
}
my $expected = join(',', map { sprintf('%s=%d.%02d/%d', $_, int($total{$_} / 100), $total{$_} % 100, $count{$_}) } sort keys %total);

$node->safe_psql('shop', 'INSERT INTO sales VALUES '
	  . join(',', map { "($_->[0], 'ST-1', 'S-1', 'Ana', '$_->[1]', 'ES', $_->[2], 'EUR', '2026-11-20 10:00:00+00')" } @sales));
wait_published($node);
my $got = wait_until(sub {
	my $r = $node->safe_psql('shop', q{
SELECT string_agg(group_values[1] || '=' || total || '/' || sale_count, ',' ORDER BY group_values)
  FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city'});
	$r eq $expected ? $r : undef;
}, 'the sales counted', 60);
is($got, $expected, 'the ranking counts every sale, with mallory\'s locks and the database\'s settings');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.stream_worker_status() WHERE last_error IS NOT NULL}),
	'0', 'the stream worker reported no error');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.cdc_status WHERE last_error IS NOT NULL}),
	'0', 'the publisher reported no error');

like(slurp_file($node->logfile),
	qr/WARNING:  pg_kappa stream worker 0: property "isolation.level" in kappa.kafka_options is ignored/,
	'the stream worker says it ignores isolation.level');

my $log = slurp_file($node->logfile);
for my $role ('cdc', 'stream')
{
	like($log, qr/WARNING:  pg_kappa: "enable.idempotence=false" is ignored for the $role producer/,
		"the $role producer stays idempotent");
	like($log, qr/WARNING:  pg_kappa: "acks=1" is ignored for the $role producer\n.*DETAIL:  pg_kappa's producers are idempotent and wait for acks=all/,
		"the $role producer waits for acks=all, and says why");
}

$mallory->quit;
done_testing();
