# A partition no stream worker has read yet holds its topic's watermark
# back.  Here another member of the stream workers' consumer group (kcat,
# as any member whose assignment is not recorded yet would) holds one of
# the two partitions of sales-events; the stream worker reads the other,
# whose backlog runs past the day's end and grace.  The day must not become
# final on that partition alone: once the other member leaves and the
# worker reads the second partition, every sale of the day counts, none is
# late.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [ 'sales-events:2', 'payment-confirmations:1' ]);
my $node = kappa_node('unread', $broker, conf => q{
kappa.cdc_enabled = off
kappa.stream_enabled = off
kappa.idle_timeout = '1h'
kappa.default_grace = '1min'
kappa.stream_batch_ms = 50
});

sub sale
{
	my ($id, $city, $cents, $at) = @_;
	return [ $id, sprintf('{"op":"c","before":null,"after":{"sale_id":"%d","store_id":"ST-1","seller_id":"S-1","seller_name":"Ana","city":"%s","country":"ES","amount":"%d.%02d","currency":"EUR","sold_at":"%s"},"source":{"connector":"test"},"ts_ms":1}',
		$id, $city, int($cents / 100), $cents % 100, $at) ];
}

# The day 2026-11-20 on both partitions (cities 0-4 on partition 0, 5-9 on
# partition 1), each partition ending with a sale of the next day past the
# day's end and grace.
my (%day, @p0, @p1);
for my $i (1 .. 40)
{
	my $p = $i % 2;
	my $city = sprintf('City %d', $p * 5 + $i % 5);
	my $cents = 100 + ($i * 37) % 900;
	push @{ $p ? \@p1 : \@p0 }, sale($i, $city, $cents, sprintf('2026-11-20T%02d:%02d:00Z', $i % 24, $i % 60));
	$day{$city}{total} += $cents;
	$day{$city}{count}++;
}
push @p0, sale(100, 'Madrid', 500, '2026-11-21T01:00:00Z');
push @p1, sale(101, 'Madrid', 700, '2026-11-21T01:30:00Z');
kcat_produce($broker, 'sales-events', \@p0, partition => 0);
kcat_produce($broker, 'sales-events', \@p1, partition => 1);

# kcat joins the group first, subscribed to sales-events alone: the range
# assignor then gives it one partition of sales-events and the stream worker
# the other (and payment-confirmations).
my $kcat_err = "$PostgreSQL::Test::Utils::tmp_check/kcat_member.err";
my $kcat = IPC::Run::start(
	[ 'kcat', '-b', $broker->bootstrap, '-G', 'pg_kappa-shop', '-X', 'enable.auto.commit=false', '-X', 'session.timeout.ms=6000', 'sales-events' ],
	'>', '/dev/null', '2>', $kcat_err);
wait_until(sub { -s $kcat_err && slurp_file($kcat_err) =~ /rebalanced .*: assigned: sales-events \[0\], sales-events \[1\]/ },
	'kcat to join the group');

my $log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', 'kappa.stream_enabled = on');
$node->reload;
wait_until(sub { slurp_file($node->logfile, $log_offset) =~ /pg_kappa stream worker 0: assigned 2 partitions of group "pg_kappa-shop"/ },
	'the worker to join the group with one partition of sales-events');
my $mine = wait_until(sub { $node->safe_psql('shop', q{
SELECT 'p' || partition FROM kappa.stream_offsets
 WHERE topic = 'sales-events' AND next_offset = 21}) }, 'a partition read to its end');
$mine =~ s/^p//;
my $theirs = 1 - $mine;
pass("the worker read partition $mine to its end");
is($node->safe_psql('shop', qq{
SELECT next_offset, stream_time IS NULL, owner_pid IS NULL FROM kappa.stream_offsets
 WHERE topic = 'sales-events' AND partition = $theirs}),
	'-2|t|t', 'the partition the other member holds has a row, with no offset and no stream time');

# Several of the worker's once-a-second ticks.
sleep 3;
is($node->safe_psql('shop', q{
SELECT count(*) FROM kappa.ranking_windows
 WHERE window_start = '2026-11-20 00:00+00' AND is_final}),
	'0', 'the day is not final while a partition is unread');

# The other member leaves: the worker gets both partitions.
$kcat->signal('TERM');
$kcat->finish;
wait_until(sub { $node->safe_psql('shop', q{
SELECT is_final FROM kappa.ranking_windows
 WHERE ranking = 'top_sales_by_city' AND window_start = '2026-11-20 00:00+00'}) eq 't' },
	'the day to become final once both partitions are read', 120);
is($node->safe_psql('shop', q{
SELECT string_agg(format('%s=%s/%s', group_values[1], total, sale_count), ',' ORDER BY group_values[1])
  FROM kappa.ranking_results
 WHERE ranking = 'top_sales_by_city' AND window_start = '2026-11-20 00:00+00'}),
	join(',', map { sprintf('%s=%d.%02d/%d', $_, int($day{$_}{total} / 100), $day{$_}{total} % 100, $day{$_}{count}) } sort keys %day),
	'every city of the day, both partitions, with its exact total and count');
is($node->safe_psql('shop', 'SELECT count(*) FROM kappa.late_events'), '0', 'no late events');
is($node->safe_psql('shop', 'SELECT count(*) FROM kappa.dead_letters'), '0', 'no dead letters');

$node->stop;
done_testing();
