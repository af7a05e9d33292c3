# Messages that are valid JSON envelopes but that no batch could write: an
# amount with 40 digits after the point (every total of its group would
# overflow 36 digits), one with 25 digits before it, group values, an item
# and a message key longer than the B-tree keys they go into allow, a
# time whose window reaches out of PostgreSQL's range, a window result with
# a fractional sale_count.  Each must be a dead letter with its reason, and
# the worker must go on (the same process) to count the good sales after
# them.  Before, each failed its batch: the worker exited, was started
# again, read the same batch, and no topic it reads moved again.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [ 'sales-events:1', 'payment-confirmations:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1', 'partial-city-totals:1' ]);
my $node = kappa_node('poison', $broker, conf => q{
kappa.idle_timeout = '1h'
kappa.default_grace = '10min'
kappa.stream_batch_ms = 20
kappa.cdc_enabled = off
});
$node->safe_psql('shop', q{
SELECT kappa.create_ranking('city_from_partials', ARRAY['city'], '1 day', calendar => true,
                            input => 'results', source_topic => 'partial-city-totals');
});

sub sale
{
	my ($id, %f) = @_;
	my %row = (sale_id => qq("$id"), store_id => '"ST-1"', seller_id => '"S-1"', seller_name => '"Ana"',
		city => '"Madrid"', country => '"ES"', amount => '"1.00"', currency => '"EUR"',
		sold_at => '"2026-11-20T10:00:00Z"', %f);
	my $after = join(',', map { qq("$_":$row{$_}) } sort keys %row);
	return [ $f{key} // $id, qq({"op":"c","before":null,"after":{$after},"source":{"connector":"test"},"ts_ms":1}) ];
}

my $long = 'x' x 1500;
my $earliest_us = -210866803200000000 + 86400 * 1000000;    # 4713-11-25 BC, inside PostgreSQL's range
my @poison = (
	[ 'amount 40 digits after the point', sale(1, amount => '"0.0000000000000000000000000000000000000001"'),
	  'ranking "top_sales_by_city": the measure has more than 18 digits before the point or more than 18 after it' ],
	[ 'amount 25 digits before the point', sale(2, amount => '"1234567890123456789012345"'),
	  'ranking "top_sales_by_city": the measure has more than 18 digits before the point or more than 18 after it' ],
	[ 'a 1500-byte city', sale(3, city => qq("$long")),
	  'ranking "top_sales_by_city": the group-by values are longer than 1000 bytes together' ],
	[ 'a 1500-byte seller id', sale(4, seller_id => qq("$long")),
	  'ranking "top_salesman_by_country": the item is longer than 1000 bytes' ],
	[ 'a 1500-byte key', sale(5, key => $long),
	  'message key is longer than 1000 bytes' ],
	[ 'a time whose 30-day window starts before 4713 BC', sale(6, sold_at => $earliest_us),
	  'ranking "top_salesman_by_country": the event time has no window (infinite or out of range)' ],
	# (microseconds near the least bigint: moved to PostgreSQL's epoch, they
	# wrapped round to the year 294 000, were counted there and made every
	# later event of the partition late)
	[ 'microseconds near the least bigint', sale(12, sold_at => '-9223372036854775000'),
	  'ranking "top_sales_by_city": the event time is not an ISO-8601 time with a zone' ],
	# (bytes that are not UTF-8 were stored as the city's text: every
	# client reading them back failed, and so did pg_dump; 0.1.5)
	[ 'a city that is not UTF-8', sale(13, city => qq("Ma\xffdrid")),
	  'message value is not valid UTF8 (the database\'s encoding)' ],
);
wait_until(sub { $node->safe_psql('shop', q{SELECT count(*) FROM kappa.stream_offsets}) eq '3' },
	'the worker assigned its partitions');
my $pid = $node->safe_psql('shop', 'SELECT pid FROM kappa.stream_worker_status()');
# and two that stay within the limits: 18 digits after the point, and 20
# after it of which the last two are zeros (trailing zeros do not count)
kcat_produce($broker, 'sales-events', [ (map { $_->[1] } @poison), sale(7, amount => '"2.50"'), sale(8, city => '"Vigo"'),
	sale(9, city => '"Soria"', amount => '"0.300000000000000004"'), sale(10, city => '"Soria"', amount => '"0.10000000000000000000"') ]);
kcat_produce($broker, 'partial-city-totals', [
	[ 'p1', '{"ranking":"top_sales_by_city","window_start":"2026-11-21T00:00:00.000000Z","window_end":"2026-11-22T00:00:00.000000Z","group":{"city":"Madrid"},"total_sales":"3.00","sale_count":1.5,"final":false,"producer":"A"}' ],
	[ 'p2', '{"ranking":"top_sales_by_city","window_start":"2026-11-21T00:00:00.000000Z","window_end":"2026-11-22T00:00:00.000000Z","group":{"city":"Madrid"},"total_sales":"3.00","sale_count":2,"final":false,"producer":"A"}' ],
	[ 'p3', '{"ranking":"top_sales_by_city","window_start":"2026-11-21T00:00:00.000000Z","window_end":"2026-11-22T00:00:00.000000Z","group":{"city":"Madrid"},"total_sales":"3.00","sale_count":2,"final":false,"producer":"' . $long . '"}' ],
	# ten producers of 18-digit counts: their sum overflowed the bigint
	# sale_count and stopped the worker for good
	map { [ "q$_", '{"ranking":"top_sales_by_city","window_start":"2026-11-21T00:00:00.000000Z","window_end":"2026-11-22T00:00:00.000000Z","group":{"city":"Madrid"},"total_sales":"3.00","sale_count":999999999999999999,"final":false,"producer":"B' . $_ . '"}' ] } 0 .. 9 ]);

wait_until(sub { $node->safe_psql('shop', q{
SELECT (SELECT count(*) FROM kappa.ranking_results WHERE ranking IN ('top_sales_by_city', 'city_from_partials')) = 4}) eq 't' },
	'the good messages after the poison ones applied');
is($node->safe_psql('shop', q{
SELECT string_agg(ranking || ':' || group_values[1] || '=' || total || '/' || sale_count, ',' ORDER BY ranking, group_values)
  FROM kappa.ranking_results WHERE ranking IN ('top_sales_by_city', 'city_from_partials')}),
	'city_from_partials:Madrid=3.00/2,top_sales_by_city:Madrid=2.50/1,top_sales_by_city:Soria=0.400000000000000004/2,top_sales_by_city:Vigo=1.00/1',
	'only the good messages are counted');
for my $i (0 .. $#poison)
{
	is($node->safe_psql('shop', qq{SELECT error FROM kappa.dead_letters WHERE topic = 'sales-events' AND "offset" = $i}),
		$poison[$i][2], "$poison[$i][0]: a dead letter with its reason");
}
wait_until(sub { $node->safe_psql('shop', q{SELECT count(*) FROM kappa.dead_letters WHERE topic = 'partial-city-totals'}) eq '12' },
	'the window results after the good one read');
is($node->safe_psql('shop', q{SELECT string_agg("offset" || ': ' || error, E'\n' ORDER BY "offset") FROM kappa.dead_letters WHERE topic = 'partial-city-totals' AND "offset" < 3}),
	"0: ranking \"city_from_partials\": sale_count is missing or not an integer of at most 15 digits\n"
	  . "2: ranking \"city_from_partials\": \"producer\" is longer than 1000 bytes",
	'a fractional sale_count, a 1500-byte producer: dead letters');
is($node->safe_psql('shop', q{SELECT count(*) || ' ' || min("offset") || '-' || max("offset") || ' ' || min(error) FROM kappa.dead_letters WHERE topic = 'partial-city-totals' AND "offset" >= 3}),
	'10 3-12 ranking "city_from_partials": sale_count is missing or not an integer of at most 15 digits',
	'18-digit sale counts: dead letters');

# Decimals with a scale past what the worker computes in (36 digits): the
# leading zeros after the point used not to count, and writing such an
# amount or total out overran a buffer on the worker's stack, which crashed
# the worker, every backend with it, and again after each restart (0.1.5).
my $tiny = '"0.' . ('0' x 200) . '1"';
kcat_produce($broker, 'payment-confirmations', [
	[ 'S-1', qq({"op":"c","before":null,"after":{"payment_id":"PAY-1","sale_id":"S-1","status":"CONFIRMED","amount":$tiny,"currency":"EUR","confirmed_at":"2026-11-20T10:00:00Z"},"source":{"connector":"test"},"ts_ms":1}) ],
	[ 'S-2', qq({"op":"c","before":null,"after":{"payment_id":"PAY-\xc3\x28","sale_id":"S-2","status":"CONFIRMED","amount":"1.00","currency":"EUR","confirmed_at":"2026-11-20T10:00:00Z"},"source":{"connector":"test"},"ts_ms":1}) ] ]);
kcat_produce($broker, 'partial-city-totals', [
	[ 'p4', '{"ranking":"top_sales_by_city","window_start":"2026-11-21T00:00:00.000000Z","window_end":"2026-11-22T00:00:00.000000Z","group":{"city":"Madrid"},"total_sales":' . $tiny . ',"sale_count":2,"final":false,"producer":"C"}' ],
	[ 'p5', qq({"ranking":"top_sales_by_city","window_start":"2026-11-21T00:00:00.000000Z","window_end":"2026-11-22T00:00:00.000000Z","group":{"city":"Madrid"},"total_sales":"1.00","sale_count":2,"final":false,"producer":"\xed\xa0\x80"}) ] ]);
wait_until(sub { $node->safe_psql('shop', q{SELECT count(*) FROM kappa.dead_letters WHERE topic IN ('payment-confirmations', 'partial-city-totals') AND "offset" IN (0, 13) AND error LIKE '%decimal%'}) eq '2' },
	'the two decimals of scale 201 refused');
is($node->safe_psql('shop', q{SELECT string_agg(topic || '[' || "offset" || ']: ' || error, E'\n' ORDER BY topic) FROM kappa.dead_letters WHERE topic IN ('payment-confirmations', 'partial-city-totals') AND error LIKE '%decimal%'}),
	"partial-city-totals[13]: ranking \"city_from_partials\": total_sales is missing or not a decimal number\n"
	  . "payment-confirmations[0]: the payment amount is a decimal of more than 36 significant digits or more than 36 after the point",
	'an amount and a total with 200 zeros after the point: dead letters');
wait_until(sub { $node->safe_psql('shop', q{SELECT count(*) FROM kappa.dead_letters WHERE (topic, "offset") IN (('payment-confirmations', 1), ('partial-city-totals', 14))}) eq '2' },
	'the payment and the window result that are not UTF-8 read');
is($node->safe_psql('shop', q{SELECT string_agg(topic || '[' || "offset" || ']: ' || error, E'\n' ORDER BY topic) FROM kappa.dead_letters WHERE (topic, "offset") IN (('payment-confirmations', 1), ('partial-city-totals', 14))}),
	"partial-city-totals[14]: message value is not valid UTF8 (the database's encoding)\n"
	  . "payment-confirmations[1]: message value is not valid UTF8 (the database's encoding)",
	'a payment id and a producer that are not UTF-8 (a broken sequence, an encoded surrogate): dead letters');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.payments}), '0', 'no payment recorded');
is($node->safe_psql('shop', 'SELECT pid FROM kappa.stream_worker_status()'), $pid, 'the same worker all along');

# A row counted before these limits existed (0.1.4 took any scale), as its
# memory and its share of the results would be after the update: a change
# of it takes out what it counted, although that would be refused now.
$node->safe_psql('shop', q{
INSERT INTO kappa.stream_rows (topic, key, row_data, counted, windows_end)
SELECT 'sales-events', '11',
       '{"sale_id":"11","store_id":"ST-1","seller_id":"S-1","seller_name":"Ana","city":"Madrid","country":"ES","amount":"0.0000000000000000000001","currency":"EUR","sold_at":"2026-11-20T10:00:00Z"}',
       ARRAY[id], '2026-11-21' FROM kappa.rankings WHERE name = 'top_sales_by_city';
UPDATE kappa.ranking_results SET total = total + 0.0000000000000000000001, sale_count = sale_count + 1
 WHERE ranking = 'top_sales_by_city' AND group_values = '{Madrid}';
});
my $update = sale(11, amount => '"1.00"');
$update->[1] =~ s/"op":"c"/"op":"u"/;
kcat_produce($broker, 'sales-events', [ $update ]);
wait_until(sub { $node->safe_psql('shop', q{
SELECT total = 3.50 AND sale_count = 2 FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city' AND group_values = '{Madrid}'}) eq 't' },
	'the old row\'s share taken out and the new one counted');
pass('a row counted under the old rules is retracted as it was counted');

done_testing();
