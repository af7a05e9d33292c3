# The stream worker's memory of rows (kappa.stream_rows) is bounded by
# kappa.row_memory_retention: a row is forgotten once every ranking on its
# topic has been final past the latest end of the row's windows for that
# long.  With -1 nothing is forgotten.  What is forgotten is exactly what the
# rule says, computed here independently of the worker; the rankings do not
# change; a replay of a forgotten row is recorded as late (its window is
# final), a replay of a remembered one is recognised as a duplicate.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::Local qw(timegm);
use PgKappa::Test;

my $broker = start_dev_broker(topics => [
	'sales-events:1', 'payment-confirmations:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
my $node = kappa_node('row_memory', $broker, conf => q{
kappa.idle_timeout = '1h'
kappa.default_grace = 0
kappa.stream_batch_ms = 20
kappa.cdc_enabled = off
kappa.row_memory_retention = -1
});

# CDC-like changes: a position (lsn, seq) makes replays recognisable.
my $lsn = 0x1000;
sub change
{
	my ($id, $city, $amount, $at, %opt) = @_;
	my $pos = $opt{lsn} // ($lsn += 0x100);
	return [ $id, sprintf('{"op":"%s","before":null,"after":{"sale_id":"%d","store_id":"ST-1","seller_id":"S-%d","seller_name":"Seller","city":"%s","country":"ES","amount":"%s","currency":"EUR","sold_at":"%s"},"source":{"connector":"postgres","lsn":"0/%X","seq":0},"ts_ms":1}',
		$opt{op} // 'c', $id, $id, $city, $amount, $at, $pos), $pos ];
}

# sale id => sold_at; the last one moves stream time, and so finality, to
# 2026-04-10T10:00Z (one partition, grace 0).  30-day windows start on
# 2026-03-08 and 2026-04-07: sales 5 and 6 are on either side of that.
my %sold_at = (
	1 => '2026-01-05T10:00:00Z', 2 => '2026-01-20T10:00:00Z', 3 => '2026-02-10T10:00:00Z',
	4 => '2026-03-01T10:00:00Z', 5 => '2026-04-06T23:00:00Z', 6 => '2026-04-07T01:00:00Z',
	7 => '2026-04-09T10:00:00Z', 8 => '2026-04-10T10:00:00Z');
my @changes = map { change($_, "City$_", "$_.00", $sold_at{$_}) } sort keys %sold_at;
kcat_produce($broker, 'sales-events', [ map { [ $_->[0], $_->[1] ] } @changes ]);

sub totals
{
	return $node->safe_psql('shop', q{
SELECT string_agg(ranking || ':' || group_values[1] || '=' || total || '/' || sale_count, ','
                  ORDER BY ranking, group_values[1], window_start)
  FROM kappa.ranking_results});
}
sub remembered
{
	return $node->safe_psql('shop', q{SELECT string_agg(key, ',' ORDER BY key::int) FROM kappa.stream_rows});
}

# The independent rule.  Windows: the UTC day, and 30 days from the epoch.
sub epoch { my ($y, $m, $d, $H) = $_[0] =~ /^(\d+)-(\d+)-(\d+)T(\d+)/; return timegm(0, 0, $H, $d, $m - 1, $y); }
sub windows_end
{
	my $t = epoch($_[0]);
	my $day = (int($t / 86400) + 1) * 86400;
	my $thirty = (int($t / (30 * 86400)) + 1) * 30 * 86400;
	return $day > $thirty ? $day : $thirty;
}
my $final = epoch('2026-04-10T10');
my $retention = 2 * 86400;
my @kept = grep { windows_end($sold_at{$_}) > $final - $retention } sort { $a <=> $b } keys %sold_at;
my @gone = grep { windows_end($sold_at{$_}) <= $final - $retention } sort { $a <=> $b } keys %sold_at;
cmp_ok(scalar(@gone), '>=', 2, 'the rule forgets some rows (' . join(',', @gone) . ')');
cmp_ok(scalar(@kept), '>=', 2, 'and keeps others (' . join(',', @kept) . ')');

wait_until(sub { $node->safe_psql('shop', q{
SELECT finalized_through = '2026-04-10T10:00:00Z' FROM kappa.ranking_state WHERE ranking = 'top_sales_by_city'}) eq 't' },
	'windows final up to the last sale');
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM kappa.ranking_state WHERE finalized_through = '2026-04-10T10:00:00Z'}) eq '2' },
	'both rankings final up to the last sale');
my $before = totals();
# what the sales make, computed here: each its own city and day, and in the
# 30-day windows each seller's amount
my $city_sql = q{
SELECT string_agg(group_values[1] || '=' || total || '/' || sale_count, ',' ORDER BY group_values[1])
  FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city'};
my $seller_sql = q{
SELECT string_agg(item || '=' || total || '/' || sale_count, ',' ORDER BY item)
  FROM kappa.ranking_results WHERE ranking = 'top_salesman_by_country'};
is($node->safe_psql('shop', $city_sql), join(',', map { "City$_=$_.00/1" } sort keys %sold_at),
	'each sale counted once in its city');
is($node->safe_psql('shop', $seller_sql), join(',', map { "S-$_=$_.00/1" } sort keys %sold_at),
	'and once for its seller');
sleep 3;    # a few ticks
is(remembered(), '1,2,3,4,5,6,7,8', 'with kappa.row_memory_retention = -1 every row is remembered');

$node->safe_psql('postgres', q{ALTER SYSTEM SET kappa.row_memory_retention = '2d'});
$node->safe_psql('postgres', q{SELECT pg_reload_conf()});
wait_until(sub { remembered() eq join(',', @kept) }, 'the rows past retention to be forgotten');
is(remembered(), join(',', @kept), 'exactly the rows whose windows were all final for 2 days are forgotten');
is($node->safe_psql('shop', q{
SELECT string_agg(key || '=' || to_char(windows_end AT TIME ZONE 'UTC', 'YYYY-MM-DD'), ',' ORDER BY key::int)
  FROM kappa.stream_rows}),
	join(',', map { my @g = gmtime(windows_end($sold_at{$_})); sprintf('%d=%04d-%02d-%02d', $_, $g[5] + 1900, $g[4] + 1, $g[3]) } @kept),
	'windows_end of the remembered rows is the later of their day and 30-day windows');
is(totals(), $before, 'forgetting changes no ranking');

# Replays: of a forgotten row (late: its windows are final) and of a
# remembered one (a duplicate).
my ($forgotten) = grep { $_->[0] == $gone[0] } @changes;
my ($kept) = grep { $_->[0] == $kept[-1] } @changes;
kcat_produce($broker, 'sales-events', [ [ $forgotten->[0], $forgotten->[1] ], [ $kept->[0], $kept->[1] ] ]);
wait_until(sub { $node->safe_psql('shop', 'SELECT sum(messages) FROM kappa.stream_worker_status()') eq '10' },
	'the replays consumed');
is($node->safe_psql('shop', 'SELECT sum(duplicates) FROM kappa.stream_worker_status()'), '1',
	'the replay of a remembered row is a duplicate');
is($node->safe_psql('shop', q{
SELECT string_agg(ranking || ':' || key || ':' || reason, ',' ORDER BY ranking) FROM kappa.late_events}),
	"top_sales_by_city:$gone[0]:the event's window is final,top_salesman_by_country:$gone[0]:the event's window is final",
	'the replay of a forgotten row is late in both rankings, not counted');
is(totals(), $before, 'neither replay changes a ranking');

done_testing();
