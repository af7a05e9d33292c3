# The rankings end to end, on one partition so that the order is known:
# events produced with kcat (out of order within grace, late after grace,
# re-deliveries, malformed messages) and changes of a real table published
# by the CDC worker (inserts, updates, deletes, a rolled-back transaction),
# then a CDC replay.  The results, late events and dead letters must equal
# what an independent model (PgKappa::Model) computes from the same topic.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Model;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [
	'sales-events:1', 'payment-confirmations:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
my $node = kappa_node('rankings', $broker, conf => qq{
kappa.idle_timeout = '1h'
kappa.default_grace = '10min'
kappa.stream_batch_ms = 50
});

sub sale
{
	my ($id, $city, $country, $seller, $amount, $at, %extra) = @_;
	my $after = sprintf('{"sale_id":"%s","store_id":"ST-1","seller_id":"%s","seller_name":"Seller %s","city":"%s","country":"%s","amount":"%s","currency":"EUR","sold_at":"%s"}',
		$id, $seller, $seller, $city, $country, $amount, $at);
	my $op = $extra{op} // 'c';
	my $before = $extra{before} // 'null';
	$after = 'null' if $op eq 'd';
	return [ $id, qq({"op":"$op","before":$before,"after":$after,"source":{"connector":"test"},"ts_ms":1}) ];
}

# a message with its first $from replaced by $to
sub broken
{
	my ($m, $from, $to) = @_;
	my $i = index($m->[1], $from);
	die "no $from in $m->[1]" if $i < 0;
	substr($m->[1], $i, length $from) = $to;
	return $m;
}

# ---- phase A: events from another producer ---------------------------------
my @a = (
	sale(101, 'Madrid', 'ES', 'S-1', '10.00', '2026-11-20T10:00:00Z'),
	sale(102, 'Barcelona', 'ES', 'S-2', '20.50', '2026-11-20T12:00:00Z'),
	sale(103, 'Lisboa', 'PT', 'S-3', '30.25', '2026-11-20T23:55:00Z'),
	sale(104, 'Madrid', 'ES', 'S-1', '5.00', '2026-11-21T00:05:00Z'),
	sale(105, 'Porto', 'PT', 'S-4', '7.75', '2026-11-20T23:58:00Z'),     # out of order, within grace
	sale(106, 'Paris', 'FR', 'S-5', '100.00', '2026-11-21T00:30:00.250Z'),
	sale(107, 'Madrid', 'ES', 'S-1', '1.00', '2026-11-20T23:59:00Z'),    # late for the day, not for 30 days
);
push @a, $a[1];                                                             # re-delivered as is
push @a,
  [ '108', 'this is not JSON' ],
  [ '108', '{"op":"c","before":null,"after":{"sale_id":"108","city":"Madrid"},"source":{}}' ],
  sale(109, 'Madrid', 'ES', 'S-1', 'abc', '2026-11-21T01:00:00Z'),
  [ '110', '{"op":"x","before":null,"after":{"sale_id":"110"}}' ],
  [ '111', '[1,2,3]' ],
  # sales that would count, broken inside the row or the source (read on
  # the same pass as the envelope)
  broken(sale(115, 'Madrid', 'ES', 'S-1', '9.00', '2026-11-21T02:00:00Z'), 'Z"}', 'Z",}'),
  broken(sale(116, 'Madrid', 'ES', 'S-1', '9.00', '2026-11-21T02:00:00Z'), '"test"', '"test" "lsn":"0/1"'),
  broken(sale(117, 'Madrid', 'ES', 'S-1', '9.00', '2026-11-21T02:00:00Z'), '"ST-1"', '"ST-1'),
  sale(112, 'Valencia', 'ES', 'S-2', '3.00', 'yesterday'),
  sale(113, 'Barcelona', 'ES', 'S-6', '42.42', '2026-11-22T09:00:00Z'),
  sale(114, 'Lisboa', 'PT', 'S-3', '11.11', '2026-11-21T15:00:00+01:00'), # late for the day
  sale(104, 'Madrid', 'ES', 'S-1', '6.00', '2026-11-21T00:05:00Z'),      # changed: its day is final
  sale(102, 'Barcelona', 'ES', 'S-2', '20.50', '2026-11-20T12:00:00Z', op => 'd', before => '{"sale_id":"102"}');
kcat_produce($broker, 'sales-events', \@a);
# a message without a key
kcat_produce($broker, 'sales-events', [ [ '', '{"op":"c","before":null,"after":{"sale_id":"999"}}' ] ]);

# ---- phase B: changes of a real table, through the CDC publisher ------------
$node->safe_psql('shop', sales_table_sql());
$node->safe_psql('shop', "SET client_min_messages = warning; SELECT kappa.publish_table('sales')");
$node->safe_psql('shop', q{
INSERT INTO sales VALUES
  (201, 'MAD-01', 'S-1', 'Seller S-1', 'Madrid', 'ES', 100.00, 'EUR', '2026-11-22T10:00:00Z'),
  (202, 'LIS-01', 'S-3', 'Seller S-3', 'Lisboa', 'PT', 50.00, 'EUR', '2026-11-22T11:00:00Z'),
  (203, 'PAR-01', 'S-5', 'Seller S-5', 'Paris', 'FR', 25.00, 'EUR', '2026-11-22T11:30:00Z');
UPDATE sales SET amount = 120.00 WHERE sale_id = 201;
UPDATE sales SET city = 'Porto' WHERE sale_id = 202;
DELETE FROM sales WHERE sale_id = 203;
BEGIN; INSERT INTO sales VALUES (204, 'X', 'S-9', 'X', 'Nowhere', 'XX', 1.00, 'EUR', '2026-11-22T12:00:00Z'); ROLLBACK;
INSERT INTO sales VALUES (205, 'MAD-01', 'S-2', 'Seller S-2', 'Madrid', 'ES', 0.99, 'EUR', '2026-11-22T13:00:00Z');
UPDATE sales SET sold_at = '2026-11-21T18:00:00Z' WHERE sale_id = 205;   -- moves into a final day
});
wait_published($node);

# An update of only the seller's name, in a batch of its own: its sums net
# to zero, and the new name must still reach the result (before 0.1.5 it
# did not: the old name stayed).
my $phase_b_end = scalar(@{ kcat_consume($broker, 'sales-events') });
wait_until(sub {
	$node->safe_psql('shop', qq{SELECT coalesce(max(next_offset), 0) >= $phase_b_end FROM kappa.stream_offsets WHERE topic = 'sales-events'}) eq 't'
}, 'stream worker through phase B');
$node->safe_psql('shop', q{UPDATE sales SET seller_name = 'Seller S-1, renamed' WHERE sale_id = 201});
wait_published($node);

# ---- phase C: a CDC replay, and an event that closes the last day -----------
my $topic = kcat_consume($broker, 'sales-events');
my ($cdc) = grep { $_->{value} =~ /"connector":"postgres"/ } @$topic;
kcat_produce($broker, 'sales-events', [
	[ $cdc->{key}, $cdc->{value} ],
	sale(301, 'Paris', 'FR', 'S-5', '1.00', '2026-11-23T00:20:00Z') ]);

# ---- the expectation, from the topic itself -------------------------------
$topic = kcat_consume($broker, 'sales-events');
my $model = PgKappa::Model->new(rankings => [
	{ name => 'top_sales_by_city', group => ['city'], window => 'day', grace_s => 600 },
	{ name => 'top_salesman_by_country', group => ['country'], item => 'seller_id',
	  label => 'seller_name', window => '30d', grace_s => 600 } ]);
$model->apply($_) for @$topic;
my $last = $topic->[-1]{offset};

wait_until(sub {
	$node->safe_psql('shop', qq{
SELECT coalesce(max(next_offset), 0) > $last FROM kappa.stream_offsets WHERE topic = 'sales-events'}) eq 't'
}, 'stream worker through the topic');
# wait for the tick that finalizes windows and produces their results
wait_until(sub {
	$node->safe_psql('shop', q{
SELECT count(*) = 0 FROM kappa.ranking_windows
 WHERE window_end <= (SELECT max(stream_time) FROM kappa.stream_offsets WHERE topic = 'sales-events') - interval '10 min'
   AND (NOT is_final OR produced_at IS NULL)}) eq 't'
}, 'windows finalized and produced');

my $db = $node->safe_psql('shop', q{
SELECT ranking || '|' || extract(epoch FROM window_start)::bigint || '|' || array_to_string(group_values, chr(31))
       || '|' || item || '|' || total || '|' || sale_count || '|' || CASE WHEN is_final THEN 't' ELSE 'f' END
  FROM kappa.ranking_results ORDER BY 1});
is_deeply([ sort split /\n/, $db ], $model->result_lines, 'ranking results equal the model, exactly');
note explain $model->result_lines;

my $labels_db = $node->safe_psql('shop', q{
SELECT ranking || '|' || extract(epoch FROM window_start)::bigint || '|' || array_to_string(group_values, chr(31))
       || '|' || item || '|' || item_label
  FROM kappa.ranking_results WHERE item_label IS NOT NULL ORDER BY 1});
is_deeply([ sort split /\n/, $labels_db ], $model->label_lines, 'item labels equal the model, the renamed seller\'s too');
like($labels_db, qr/\|S-1\|Seller S-1, renamed$/m, 'the renamed seller has the new name');

my $late_db = $node->safe_psql('shop', q{SELECT ranking || '@' || "offset" FROM kappa.late_events ORDER BY 1});
is_deeply([ split /\n/, $late_db ], [ sort map { "$_->[0]\@$_->[1]" } @{ $model->{late} } ],
	'late events are the ones the model finds late, per ranking');
cmp_ok(scalar(@{ $model->{late} }), '>=', 4, 'the data has late events');

my $dead_db = $node->safe_psql('shop',
	q{SELECT "offset" FROM kappa.dead_letters WHERE source = 'stream' AND topic = 'sales-events' ORDER BY 1});
is_deeply([ split /\n/, $dead_db ], [ sort { $a <=> $b } map { $_->[0] } @{ $model->{dead} } ],
	'dead letters are the malformed messages');
is($node->safe_psql('shop', q{
SELECT count(*) FROM kappa.dead_letters
 WHERE source = 'stream' AND (raw IS NULL AND "offset" <> -1 OR error = '' OR partition IS NULL)}),
	'0', 'each dead letter has its raw bytes, position and reason');
like($node->safe_psql('shop', q{SELECT string_agg(error, ' / ') FROM kappa.dead_letters}),
	qr/not a JSON object.*unknown "op"/s, 'reasons say what is wrong');
is($node->safe_psql('shop', 'SELECT sum(duplicates) FROM kappa.stream_worker_status()'),
	$model->{duplicates}, 'replays and re-deliveries are recognised');

# The SQL surface agrees with the model's order (ties by name).
my $day20_start = PgKappa::Model::parse_time('2026-11-20T00:00:00Z');
my %day20 = map { (split /\|/)[2] => (split /\|/)[4] }
  grep { /^top_sales_by_city\|$day20_start\|/ } @{ $model->result_lines };
my @expected_order = sort { $day20{$b} <=> $day20{$a} || $a cmp $b } keys %day20;
is($node->safe_psql('shop', q{SELECT string_agg(city || '=' || total_sales, ',' ORDER BY rank)
  FROM kappa.top_sales_by_city('2026-11-20 12:00+00', 10)}),
	join(',', map { "$_=$day20{$_}" } @expected_order), 'top_sales_by_city for 2026-11-20');

# Final windows went to the results topic, one message per group.
my $produced = kcat_consume($broker, 'top-sales-by-city');
my %by_key = map { $_->{key} => decode_json($_->{value}) } @$produced;
my $final_rows = $node->safe_psql('shop', q{
SELECT to_char(window_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') || '|' || group_values[1]
       || chr(9) || group_values[1] || chr(9) || total || chr(9) || sale_count
  FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city' AND is_final ORDER BY 1});
my $ok = 1;
for my $line (split /\n/, $final_rows)
{
	my ($key, $city, $total, $count) = split /\t/, $line;
	my $m = $by_key{$key};
	unless ($m && $m->{total_sales} eq $total && $m->{sale_count} == $count
		&& $m->{final} && $m->{group}{city} eq $city && $m->{ranking} eq 'top_sales_by_city')
	{
		diag "window result for $key: " . ($m ? encode_json($m) : 'missing');
		$ok = 0;
	}
}
ok($ok && scalar(keys %by_key) == scalar(my @l = split /\n/, $final_rows), 'final results produced to top-sales-by-city');
my ($salesman) = @{ kcat_consume($broker, 'top-salesman-by-country') };
is($salesman, undef, 'the 30-day window is still open: nothing produced for it');

# Rows inserted into sales show up in kappa.top_sales_by_city().
is($node->safe_psql('shop', q{SELECT total_sales FROM kappa.top_sales_by_city('2026-11-22 12:00+00') WHERE city = 'Madrid'}),
	'120.00', 'CDC rows are in the rankings (sale 201 after its update)');

is($node->safe_psql('shop', q{SELECT late_events > 0 AND events_applied > 0 FROM kappa.stat_rankings WHERE ranking = 'top_sales_by_city'}),
	't', 'kappa.stat_rankings counts');

$node->stop;
done_testing();
