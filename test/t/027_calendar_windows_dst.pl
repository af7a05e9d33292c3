# Calendar windows in a zone with daylight saving time, through the stream
# worker (the SQL window functions are covered by pg_regress "windows").
# The worker remembers the last window it found and reuses it for the next
# event in it, except near a UTC offset change: runs of events on ordinary
# days and events on both sides of Madrid's 2026 changes (29 March, a day of
# 23 hours; 25 October, 25 hours with 02:00-03:00 twice) must land in the
# windows written out here by hand, from the rule CET = UTC+1,
# CEST = UTC+2 from 01:00 UTC on the last Sunday of March to 01:00 UTC on
# the last Sunday of October.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [
	'sales-events:1', 'payment-confirmations:1', 'dst-events:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
my $node = kappa_node('calendar_dst', $broker, conf => q{
kappa.idle_timeout = '1h'
kappa.stream_batch_ms = 20
kappa.cdc_enabled = off
});

$node->safe_psql('shop', q{
SELECT kappa.create_ranking('madrid_days', ARRAY['city'], interval '1 day', calendar => true,
                            time_zone => 'Europe/Madrid', grace => interval '1000 days',
                            source_topic => 'dst-events');
SELECT kappa.create_ranking('madrid_months', ARRAY['city'], interval '1 month', calendar => true,
                            time_zone => 'Europe/Madrid', grace => interval '1000 days',
                            source_topic => 'dst-events');
});

# [sold_at (UTC), local day's window start and end (UTC), month window start]
my @events = (
	[ '2026-01-10T10:00:00Z', '2026-01-09T23:00', '2026-01-10T23:00', '2025-12-31T23:00' ],
	[ '2026-01-10T15:00:00Z', '2026-01-09T23:00', '2026-01-10T23:00', '2025-12-31T23:00' ],
	[ '2026-01-10T22:59:59.999999Z', '2026-01-09T23:00', '2026-01-10T23:00', '2025-12-31T23:00' ],
	[ '2026-01-10T23:00:00Z', '2026-01-10T23:00', '2026-01-11T23:00', '2025-12-31T23:00' ],
	[ '2026-03-27T22:59:59Z', '2026-03-26T23:00', '2026-03-27T23:00', '2026-02-28T23:00' ],
	[ '2026-03-27T23:00:00Z', '2026-03-27T23:00', '2026-03-28T23:00', '2026-02-28T23:00' ],
	[ '2026-03-28T22:30:00Z', '2026-03-27T23:00', '2026-03-28T23:00', '2026-02-28T23:00' ],
	[ '2026-03-28T23:00:00Z', '2026-03-28T23:00', '2026-03-29T22:00', '2026-02-28T23:00' ],
	[ '2026-03-29T01:30:00Z', '2026-03-28T23:00', '2026-03-29T22:00', '2026-02-28T23:00' ],
	[ '2026-03-29T21:59:59Z', '2026-03-28T23:00', '2026-03-29T22:00', '2026-02-28T23:00' ],
	[ '2026-03-29T22:00:00Z', '2026-03-29T22:00', '2026-03-30T22:00', '2026-02-28T23:00' ],
	[ '2026-03-31T21:59:59Z', '2026-03-30T22:00', '2026-03-31T22:00', '2026-02-28T23:00' ],
	[ '2026-03-31T22:00:00Z', '2026-03-31T22:00', '2026-04-01T22:00', '2026-03-31T22:00' ],
	[ '2026-07-15T10:00:00Z', '2026-07-14T22:00', '2026-07-15T22:00', '2026-06-30T22:00' ],
	[ '2026-07-15T21:59:59Z', '2026-07-14T22:00', '2026-07-15T22:00', '2026-06-30T22:00' ],
	[ '2026-07-15T22:00:00Z', '2026-07-15T22:00', '2026-07-16T22:00', '2026-06-30T22:00' ],
	[ '2026-10-24T21:59:00Z', '2026-10-23T22:00', '2026-10-24T22:00', '2026-09-30T22:00' ],
	[ '2026-10-24T22:00:00Z', '2026-10-24T22:00', '2026-10-25T23:00', '2026-09-30T22:00' ],
	[ '2026-10-25T00:30:00Z', '2026-10-24T22:00', '2026-10-25T23:00', '2026-09-30T22:00' ],
	[ '2026-10-25T01:30:00Z', '2026-10-24T22:00', '2026-10-25T23:00', '2026-09-30T22:00' ],
	[ '2026-10-25T22:59:00Z', '2026-10-24T22:00', '2026-10-25T23:00', '2026-09-30T22:00' ],
	[ '2026-10-25T23:00:00Z', '2026-10-25T23:00', '2026-10-26T23:00', '2026-09-30T22:00' ],
	[ '2026-10-31T22:59:59Z', '2026-10-30T23:00', '2026-10-31T23:00', '2026-09-30T22:00' ],
	[ '2026-10-31T23:00:00Z', '2026-10-31T23:00', '2026-11-01T23:00', '2026-10-31T23:00' ]);

# amount 2^i identifies the set of events a total is made of
my (@messages, %day, %month);
for my $i (0 .. $#events)
{
	my ($at, $ds, $de, $ms) = @{ $events[$i] };
	my $amount = 2**$i;
	push @messages, [ $i + 1, sprintf('{"op":"c","before":null,"after":{"sale_id":"%d","store_id":"ST-1","seller_id":"S-1","seller_name":"Seller","city":"Madrid","country":"ES","amount":"%d.00","currency":"EUR","sold_at":"%s"},"source":{"connector":"postgres","lsn":"0/%X","seq":0},"ts_ms":1}',
		$i + 1, $amount, $at, 0x1000 + $i * 0x100) ];
	$day{"$ds-$de"} += $amount;
	$month{$ms} += $amount;
}
kcat_produce($broker, 'dst-events', \@messages);

wait_until(sub { $node->safe_psql('shop', q{
SELECT coalesce(sum(events_applied), 0) FROM kappa.stat_rankings WHERE ranking IN ('madrid_days', 'madrid_months')}) eq 2 * @events },
	'every event applied to both rankings');

is($node->safe_psql('shop', q{
SELECT string_agg(to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI') || '-' ||
                  to_char(window_end AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI') || '=' || total::bigint, ','
                  ORDER BY window_start)
  FROM kappa.ranking_results WHERE ranking = 'madrid_days'}),
	join(',', map { "$_=$day{$_}" } sort keys %day),
	'each event is in the Madrid day it happened on, 23- and 25-hour days included');
is($node->safe_psql('shop', q{
SELECT string_agg(to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI') || '=' || total::bigint, ','
                  ORDER BY window_start)
  FROM kappa.ranking_results WHERE ranking = 'madrid_months'}),
	join(',', map { "$_=$month{$_}" } sort keys %month),
	'and in its Madrid month');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.late_events}), '0', 'nothing late');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.dead_letters}), '0', 'nothing dead-lettered');

done_testing();
