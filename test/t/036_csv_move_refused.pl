# A file the system does not let the CSV worker move (here processed/ made
# read-only; an inbox with the sticky bit and files of other owners, or
# another file system, do the same) after Kafka acknowledged its rows: the
# worker says so, keeps it recorded as processed, and goes on with the
# files after it, instead of failing on it after every restart.  Once the
# cause is fixed, a reload moves the files, and nothing is sent twice.
# And a file only touched while its rows are in flight is not sent again.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => ['sales-events:1']);
my $inbox = PostgreSQL::Test::Utils::tempdir();
my $node = kappa_node('csv_move', $broker, conf => qq{
kappa.cdc_enabled = off
kappa.stream_enabled = off
kappa.csv_inbox = '$inbox'
kappa.csv_poll_interval = 100
kappa.csv_stable_ms = 300
});

sub drop_file
{
	my ($name, $id) = @_;
	open my $fh, '>:raw', "$inbox/.$name.tmp" or die $!;
	print $fh "sale_id,store_id,seller_id,seller_name,city,country,amount,currency,sold_at\n",
	  "$id,ST-1,S-1,Ana,Madrid,ES,1.00,EUR,2026-11-20T10:00:00Z\n";
	close $fh;
	rename("$inbox/.$name.tmp", "$inbox/$name") or die $!;
}

sub keys_in_topic
{
	return join(',', sort map { $_->{key} } @{ kcat_consume($broker, 'sales-events') });
}

drop_file('sales_a.csv', 1);
wait_until(sub { -e "$inbox/processed/sales_a.csv" }, 'the first file to be processed');
my $pid = $node->safe_psql('shop', q{
SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_kappa csv inbox'});

chmod 0500, "$inbox/processed" or die $!;
my $log_offset = -s $node->logfile;
drop_file('sales_b.csv', 2);
drop_file('sales_c.csv', 3);
wait_until(sub { keys_in_topic() eq '1,2,3' }, 'the rows of both files to be in Kafka');
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM kappa.csv_files WHERE name IN ('sales_b.csv', 'sales_c.csv') AND state = 'processed'}) eq '2' },
	'both files to be recorded as processed');
ok(-e "$inbox/sales_b.csv" && -e "$inbox/sales_c.csv", 'both files are still in the inbox');
is($node->safe_psql('shop', q{
SELECT string_agg(name || ':' || moved_to || ':' || (moved_at IS NULL), ',' ORDER BY name)
  FROM kappa.csv_files WHERE name IN ('sales_b.csv', 'sales_c.csv')}),
	'sales_b.csv:processed/sales_b.csv:true,sales_c.csv:processed/sales_c.csv:true',
	'the ledger keeps where they go, not moved yet');
like($node->safe_psql('shop', q{SELECT last_error FROM kappa.stat_sources WHERE source = 'csv'}),
	qr{^could not move "sales_[bc]\.csv" to processed/sales_[bc]\.csv: Permission denied; it is recorded as processed and is moved after the next reload or restart of the worker$},
	'the status says why and what happens');
# The worker goes on looking at the inbox meanwhile.
sleep 2;
is($node->safe_psql('shop', q{
SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_kappa csv inbox'}), $pid,
	'the worker did not end');
my $log = slurp_file($node->logfile, $log_offset);
unlike($log, qr/ERROR:  could not move/, 'no error ends it');
my @said = $log =~ /LOG:  pg_kappa csv inbox: could not move "sales_b\.csv"/g;
is(scalar(@said), 1, 'the log says it once per file');

chmod 0700, "$inbox/processed" or die $!;
$node->reload;
wait_until(sub { -e "$inbox/processed/sales_b.csv" && -e "$inbox/processed/sales_c.csv" },
	'the files to be moved after the reload');
ok(!-e "$inbox/sales_b.csv" && !-e "$inbox/sales_c.csv", 'the inbox is empty');
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM kappa.csv_files WHERE moved_at IS NOT NULL}) eq '3' }, 'the moves to be recorded');
is(keys_in_topic(), '1,2,3', 'no row was sent twice');

# A file touched while its rows wait for Kafka's acknowledgement (a sync
# agent, a backup restoring times): its content is what was read, so it is
# recorded and moved, not read and sent again, and no attempt is counted.
$broker->control('produce-errors 19 20000');
drop_file('sales_d.csv', 4);
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM kappa.csv_files WHERE name = 'sales_d.csv' AND state = 'processing'}) eq '1' },
	'the worker to read the file');
my $later = time + 3600;
utime $later, $later, "$inbox/sales_d.csv" or die $!;
$broker->control('clear-produce-errors');
wait_until(sub { -e "$inbox/processed/sales_d.csv" }, 'the touched file to be processed');
is($node->safe_psql('shop', q{
SELECT state || ':' || attempts FROM kappa.csv_files WHERE name = 'sales_d.csv'}),
	'processed:1', 'recorded as processed at its first attempt');
is(keys_in_topic(), '1,2,3,4', 'its row was sent once');
is($node->safe_psql('shop', 'SELECT count(*) FROM kappa.dead_letters'), '0', 'no dead letters');

$node->stop;
done_testing();
