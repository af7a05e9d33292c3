# Sink rankings: window results computed elsewhere written into the same
# results.  Partial results of several producers (instances that each
# aggregate a share of the partitions) add up; a producer's newer value
# replaces its older one; this instance's own final results, read back from
# top-sales-by-city, reproduce its ranking.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [ 'sales-events:1', 'payment-confirmations:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1', 'partial-city-totals:1' ]);
my $node = kappa_node('sink', $broker, conf => q{
kappa.idle_timeout = '1h'
kappa.default_grace = '10min'
kappa.stream_batch_ms = 20
kappa.cdc_enabled = off
});
$node->safe_psql('shop', q{
SELECT kappa.create_ranking('city_from_partials', ARRAY['city'], '1 day', calendar => true,
                            input => 'results', source_topic => 'partial-city-totals');
SELECT kappa.create_ranking('city_from_own_results', ARRAY['city'], '1 day', calendar => true,
                            input => 'results', source_topic => 'top-sales-by-city');
SELECT kappa.create_ranking('country_from_partials', ARRAY['country'], '1 day', calendar => true,
                            input => 'results', source_topic => 'partial-city-totals');
});

sub result
{
	my ($producer, $city, $total, $count, $final) = @_;
	return [ "2026-11-21T00:00:00.000000Z|$city",
		qq({"ranking":"top_sales_by_city","window_start":"2026-11-21T00:00:00.000000Z","window_end":"2026-11-22T00:00:00.000000Z","group":{"city":"$city"},"total_sales":"$total","sale_count":$count,"final":$final,"producer":"$producer"}) ];
}

# (one partition, the partial that is not final first: a window is final
# once every partial seen so far says so, whatever the batches are)
kcat_produce($broker, 'partial-city-totals', [
	result('A', 'Lisboa', '3.00', 1, 'false'),
	result('A', 'Madrid', '10.00', 1, 'true'),
	result('B', 'Madrid', '5.50', 2, 'true'),
	result('A', 'Madrid', '12.00', 2, 'true'),      # A's newer value
	[ 'x', '{"window_start":"nonsense"}' ] ]);
wait_until(sub {
	$node->safe_psql('shop', q{SELECT count(*) FROM kappa.dead_letters WHERE topic = 'partial-city-totals'}) eq '6'
}, 'partials consumed');
is($node->safe_psql('shop', q{SELECT string_agg(DISTINCT error, E'\n') FROM kappa.dead_letters WHERE topic = 'partial-city-totals'}),
	"ranking \"city_from_partials\": window_start and window_end must be ISO-8601 times with a zone\n"
	  . "ranking \"country_from_partials\": a group-by field of the ranking is missing from \"group\"\n"
	  . "ranking \"country_from_partials\": window_start and window_end must be ISO-8601 times with a zone",
	'the nonsense refused by both rankings of the topic, the results by city by the one by country');
is($node->safe_psql('shop', q{SELECT string_agg(group_values[1] || '=' || total || '/' || sale_count || '/' || is_final, ',' ORDER BY group_values[1])
  FROM kappa.ranking_results WHERE ranking = 'city_from_partials'}),
	'Lisboa=3.00/1/false,Madrid=17.50/4/true', 'partials of two producers add up; newer values replace older');
is($node->safe_psql('shop', q{SELECT is_final FROM kappa.ranking_windows WHERE ranking = 'city_from_partials'}),
	'f', 'the window is final only once every producer said so');

# Two sink rankings of one topic each take what suits them (0.1.5: the
# first to refuse a message kept it from the others); a partial that does
# not say whether it is final is not (0.1.5: it was taken as final); and
# results per item are refused by a ranking without items (each item's
# value would replace the others').
my $day2 = '"window_start":"2026-11-22T00:00:00.000000Z","window_end":"2026-11-23T00:00:00.000000Z"';
kcat_produce($broker, 'partial-city-totals', [
	[ 'c', qq({$day2,"group":{"city":"Lisboa","country":"PT"},"total_sales":"4.00","sale_count":1,"producer":"C"}) ],
	[ 'd', qq({$day2,"group":{"country":"PT"},"total_sales":"6.00","sale_count":2,"final":true,"producer":"D"}) ],
	[ 'e', qq({$day2,"group":{"country":"PT"},"item":{"seller_id":"S-1"},"total_sales":"1.00","sale_count":1,"final":true,"producer":"E"}) ] ]);
wait_until(sub {
	$node->safe_psql('shop', q{SELECT count(*) FROM kappa.dead_letters WHERE topic = 'partial-city-totals'}) eq '9'
}, 'the second day\'s partials consumed');
is($node->safe_psql('shop', q{SELECT string_agg("offset" || ' ' || error, E'\n' ORDER BY "offset", error) FROM kappa.dead_letters
 WHERE topic = 'partial-city-totals' AND "offset" >= 5}),
	"6 ranking \"city_from_partials\": a group-by field of the ranking is missing from \"group\"\n"
	  . "7 ranking \"city_from_partials\": a group-by field of the ranking is missing from \"group\"\n"
	  . "7 ranking \"country_from_partials\": the message has an \"item\" but the ranking has no item field",
	'each ranking says why it refused what it refused');
is($node->safe_psql('shop', q{SELECT string_agg(ranking || ' ' || group_values[1] || '=' || total || '/' || sale_count || '/' || is_final, ',' ORDER BY ranking)
  FROM kappa.ranking_results WHERE window_start = '2026-11-22 00:00+00' AND ranking LIKE '%_from_partials'}),
	'city_from_partials Lisboa=4.00/1/false,country_from_partials PT=10.00/3/false',
	'what one refused the other took; without "final", not final');
is($node->safe_psql('shop', q{SELECT string_agg(ranking || '=' || is_final, ',' ORDER BY ranking) FROM kappa.ranking_windows
 WHERE window_start = '2026-11-22 00:00+00'}),
	'city_from_partials=false,country_from_partials=false', 'and neither window is final');

# This instance's own results, through Kafka and back.
kcat_produce($broker, 'sales-events', [ map {
	[ $_, sprintf('{"op":"c","before":null,"after":{"sale_id":"%d","seller_id":"S","seller_name":"S","city":"%s","country":"ES","amount":"%d.25","sold_at":"2026-11-20T1%d:00:00Z"},"source":{"connector":"test"}}',
		$_, $_ % 2 ? 'Madrid' : 'Sevilla', $_, $_ % 10) ] } 1 .. 20 ]);
kcat_produce($broker, 'sales-events', [ [ 99, '{"op":"c","before":null,"after":{"sale_id":"99","seller_id":"S","seller_name":"S","city":"Cadiz","country":"ES","amount":"1.00","sold_at":"2026-11-21T01:00:00Z"},"source":{"connector":"test"}}' ] ]);
wait_until(sub {
	$node->safe_psql('shop', q{SELECT count(*) FROM kappa.ranking_results WHERE ranking = 'city_from_own_results'}) eq '2'
}, 'final results of 2026-11-20 read back');
# The expectation, from the sales themselves: odd ids in Madrid, even ids in
# Sevilla, id.25 each, all on 2026-11-20 (sale 99 is the next day's).
my %expected;
for my $id (1 .. 20)
{
	my $city = $id % 2 ? 'Madrid' : 'Sevilla';
	$expected{$city}{cents} += $id * 100 + 25;
	$expected{$city}{count}++;
}
my $expected = join(',', map { sprintf('%s=%d.%02d/%d', $_, int($expected{$_}{cents} / 100),
	$expected{$_}{cents} % 100, $expected{$_}{count}) } sort keys %expected);
is($node->safe_psql('shop', q{
SELECT string_agg(group_values[1] || '=' || total || '/' || sale_count, ',' ORDER BY group_values[1])
  FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city' AND is_final}),
	$expected, 'the events ranking: the totals of the sales');
is($node->safe_psql('shop', q{
SELECT string_agg(group_values[1] || '=' || total || '/' || sale_count, ',' ORDER BY group_values[1])
  FROM kappa.ranking_results WHERE ranking = 'city_from_own_results'}),
	$expected, 'a sink of those final results, read back from top-sales-by-city, holds the same totals');
is($node->safe_psql('shop', q{
SELECT bool_and(is_final) FROM kappa.ranking_results WHERE ranking = 'city_from_own_results'}),
	't', 'and they are final');

$node->stop;
done_testing();
