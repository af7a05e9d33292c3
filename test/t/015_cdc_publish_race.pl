# kappa.publish_table() creates the slot before its transaction commits.  A
# publisher that looks at the slot meanwhile (it drops slots no table needs)
# must wait for that transaction and then see the table: the slot stays and
# the table's changes are published.  (Found in CI: the publisher read the
# table list with a snapshot taken before it waited, and dropped the slot.)
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => ['sales-events:2']);
my $node = kappa_node('publish_race', $broker, conf => q{
kappa.cdc_poll_interval = 50
});
$node->safe_psql('shop', sales_table_sql());
$node->safe_psql('shop', q{
INSERT INTO sales SELECT i, 'ST', 'S', 'Seller', 'City', 'ES', 10, 'EUR', now()
  FROM generate_series(1, 100) i;});
wait_until(sub { $node->safe_psql('shop', 'SELECT state FROM kappa.cdc_status') =~ /no table|waiting/ },
	'the publisher to wait for a published table');

# Publish in a transaction that stays open for 3 seconds after the slot exists.
my ($out, $err) = ('', '');
my $h = IPC::Run::start([ 'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('shop'), '-c', q{
BEGIN;
SELECT kappa.publish_table('sales');
SELECT pg_sleep(3);
COMMIT;} ], '>', \$out, '2>', \$err);
wait_until(sub { $node->safe_psql('shop', q{SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pg_kappa_cdc'}) eq '1' },
	'publish_table to create the slot');
ok($h->finish, 'publish_table committed') or diag($err);

sleep 2;
is($node->safe_psql('shop', q{SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pg_kappa_cdc'}),
	'1', 'the slot is still there after the publisher looked at it');
$node->safe_psql('shop', q{INSERT INTO sales VALUES (1000, 'ST', 'S', 'Seller', 'City', 'ES', 5, 'EUR', now())});
wait_published($node);
my %ops;
$ops{ $_->{op} }++ for map { parse_change($_->{value}) } @{ kcat_consume($broker, 'sales-events') };
is(join(',', map { "$_=$ops{$_}" } sort keys %ops), 'c=1,r=100',
	'the 100 existing rows and the new insert are in the topic');

# kappa.unpublish_table() while a transaction writing the table is open:
# it waits for that transaction, which is published whole (0.1.5; before,
# its changes after the unpublish committed were left out).
# The writer holds its transaction open until unpublish_table is seen
# waiting for it, then writes again and commits.
my $writer = $node->background_psql('shop', on_error_stop => 1);
$writer->query_safe(q{BEGIN; INSERT INTO sales VALUES (1001, 'ST', 'S', 'Seller', 'City', 'ES', 5, 'EUR', now());});
my ($uout, $uerr) = ('', '');
my $unpublish = IPC::Run::start([ 'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('shop'), '-c',
	q{SELECT kappa.unpublish_table('sales')} ], '>', \$uout, '2>', \$uerr);
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM pg_locks WHERE relation = 'sales'::regclass AND mode = 'ShareLock' AND NOT granted}) eq '1' },
	'unpublish_table to wait for the writer');
$writer->query_safe(q{INSERT INTO sales VALUES (1002, 'ST', 'S', 'Seller', 'City', 'ES', 5, 'EUR', now()); COMMIT;});
$writer->quit;
ok($unpublish->finish, 'unpublish_table returned once the writer committed') or diag($uerr);
$node->safe_psql('shop', q{INSERT INTO sales VALUES (1003, 'ST', 'S', 'Seller', 'City', 'ES', 5, 'EUR', now())});
wait_until(sub { $node->safe_psql('shop', q{SELECT count(*) FROM pg_replication_slots}) eq '0' },
	'the slot dropped after the last unpublish');
is(join(',', sort map { $_->{key} } grep { $_->{value} =~ /"op":"c"/ } @{ kcat_consume($broker, 'sales-events') }),
	'1000,1001,1002', 'the transaction open during the unpublish is published whole, the one after not');

# Two first calls of kappa.publish_table() for one table at once: the
# second waits for the first and finds the table published (0.1.5; before,
# it read the catalog with a snapshot from before its wait and failed on
# the primary key, a raw "duplicate key value").
my $first = $node->background_psql('shop', on_error_stop => 1);
$first->query_safe(q{SET client_min_messages = warning; BEGIN; SELECT kappa.publish_table('sales');});
my ($pout, $perr) = ('', '');
my $second = IPC::Run::start([ 'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('shop'), '-c',
	q{SELECT kappa.publish_table('sales')} ], '>', \$pout, '2>', \$perr);
# (the publisher waits for the same lock, to look at the slot)
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE NOT l.granted AND a.backend_type = 'client backend' AND a.query LIKE '%publish_table%'}) eq '1' },
	'the second call to wait for the first');
$first->query_safe('COMMIT');
$first->quit;
ok($second->finish, 'the second call returns') or diag($perr);
like($perr, qr/NOTICE:  table "sales" is already published/, 'saying the table is published');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.published_tables}), '1', 'once');

# The same in REPEATABLE READ: the second call's snapshot is from before its
# wait and cannot show it the first call's row.  It fails with a
# serialization failure, to retry on, as PostgreSQL's own commands do in
# such a conflict (0.1.5; before, the raw "duplicate key value").
$node->safe_psql('shop', q{SET client_min_messages = warning; SELECT kappa.unpublish_table('sales')});
$first = $node->background_psql('shop', on_error_stop => 1);
$first->query_safe(q{SET client_min_messages = warning; BEGIN; SELECT kappa.publish_table('sales');});
($pout, $perr) = ('', '');
$second = IPC::Run::start([ 'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('shop'), '-c',
	q{BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT kappa.publish_table('sales'); COMMIT;} ],
	'>', \$pout, '2>', \$perr);
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE NOT l.granted AND a.backend_type = 'client backend' AND a.query LIKE '%publish_table%'}) eq '1' },
	'the second call, in REPEATABLE READ, to wait for the first');
$first->query_safe('COMMIT');
$first->quit;
ok(!$second->finish, 'the second call fails');
like($perr, qr/ERROR:  could not serialize access due to a concurrent kappa\.publish_table\(\) or kappa\.unpublish_table\(\)\nDETAIL:  Table "sales" was published by a transaction that committed after this one took its snapshot\.\nHINT:  Retry the transaction\./,
	'with a serialization failure that says what happened');
my ($rout, $rerr) = ('', '');
IPC::Run::run([ 'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('shop'), '-c',
	q{BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT kappa.publish_table('sales'); COMMIT;} ],
	'>', \$rout, '2>', \$rerr);
like($rerr, qr/NOTICE:  table "sales" is already published/, 'retried, it finds the table published');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.published_tables}), '1', 'once');

# kappa.unpublish_table() in REPEATABLE READ, after a publish_table() that
# committed since the transaction took its snapshot: the DELETE does not
# see the row.  A serialization failure, not "is not published" (0.1.5).
$node->safe_psql('shop', q{SET client_min_messages = warning; SELECT kappa.unpublish_table('sales')});
my $rr = $node->background_psql('shop', on_error_stop => 0);
$rr->query_safe(q{BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM kappa.published_tables;});
$node->safe_psql('shop', q{SET client_min_messages = warning; SELECT kappa.publish_table('sales')});
$rr->query(q{SELECT kappa.unpublish_table('sales');});
like($rr->{stderr}, qr/could not serialize access due to a concurrent kappa\.publish_table\(\) or kappa\.unpublish_table\(\)/,
	'unpublish_table in REPEATABLE READ fails on a publish committed after its snapshot');
$rr->query(q{ROLLBACK;});
$rr->quit;
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.published_tables}), '1', 'the table stays published');
my ($r2out, $r2err) = ('', '');
IPC::Run::run([ 'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('shop'), '-c',
	q{BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT kappa.unpublish_table('sales'); COMMIT;} ],
	'>', \$r2out, '2>', \$r2err);
like($r2out, qr/^ t$/m, 'retried, it unpublishes the table');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.published_tables}), '0', 'and the table is no longer published');

done_testing();
