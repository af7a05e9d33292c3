# Final results Kafka refuses (here a result larger than message.max.bytes:
# a seller name of 1.2 MB) no longer stop the stream worker: the window
# waits and is tried again, the other windows are produced meanwhile, and
# new Kafka settings (a larger message.max.bytes) let it through.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [
	'sales-events:1', 'payment-confirmations:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1', 'big-results:1', 'pipe-results:1' ]);
my $node = kappa_node('refused', $broker, conf => qq{
kappa.idle_timeout = '1h'
kappa.default_grace = '0'
kappa.stream_batch_ms = 50
});
$node->safe_psql('shop', q{SELECT kappa.create_ranking('big_by_seller', ARRAY['city'], '1 day',
                            item => 'seller_id', item_label => 'seller_name',
                            calendar => true, results_topic => 'big-results')});
# Two group fields whose values hold the keys' separator: the groups
# ("a|b", "c") and ("a", "b|c") must not share a key (0.1.5).
$node->safe_psql('shop', q{SELECT kappa.create_ranking('by_city_store', ARRAY['city', 'store_id'], '1 day',
                            calendar => true, results_topic => 'pipe-results')});

my $big_name = 'N' x 1_200_000;
sub sale
{
	my ($id, $city, $seller, $name, $amount, $at, $store) = @_;
	$store //= 'ST-1';
	return qq($id\x1f{"op":"c","before":null,"after":{"sale_id":"$id","store_id":"$store","seller_id":"$seller","seller_name":"$name","city":"$city","country":"ES","amount":"$amount","currency":"EUR","sold_at":"$at"},"source":{"connector":"test"},"ts_ms":1}\n);
}
my $in = sale(1, 'Madrid', 'S-1', $big_name, '10.00', '2026-11-20T10:00:00Z')
  . sale(2, 'Madrid', 'S-2', 'Ana', '5.50', '2026-11-20T11:00:00Z')
  . sale(4, 'a|b', 'S-4', 'Eva', '2.00', '2026-11-20T12:00:00Z', 'c')
  . sale(5, 'a', 'S-5', 'Rui', '3.00', '2026-11-20T12:00:00Z', 'b|c')
  . sale(6, 'x\\\\', 'S-6', 'Ida', '4.00', '2026-11-20T12:00:00Z', 'y')
  . sale(3, 'Sevilla', 'S-3', 'Luis', '1.00', '2026-11-22T09:00:00Z');	# the 20th is final
my ($out, $err) = ('', '');
IPC::Run::run([ 'kcat', '-P', '-b', $broker->{bootstrap}, '-t', 'sales-events', '-K', "\x1f",
		'-X', 'message.max.bytes=4000000' ],
	'<', \$in, '>', \$out, '2>', \$err) or die "kcat -P failed: $err";

my $pid = wait_until(sub { $node->safe_psql('shop', q{
SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_kappa stream worker'}) });
my $produced_at = sub {
	my ($ranking) = @_;
	return $node->safe_psql('shop', qq{
SELECT produced_at IS NOT NULL FROM kappa.ranking_windows
 WHERE ranking = '$ranking' AND window_start = '2026-11-20 00:00+00' AND is_final});
};
wait_until(sub { $produced_at->('top_sales_by_city') eq 't' },
	'the day of top_sales_by_city produced');
my %city = map { $_->{key} => decode_json($_->{value}) } @{ kcat_consume($broker, 'top-sales-by-city') };
is($city{'2026-11-20T00:00:00.000000Z|Madrid'}{total_sales}, '15.50', 'with its total');
is($city{'2026-11-20T00:00:00.000000Z|a\\|b'}{group}{city}, 'a|b', 'a "|" in a key is escaped');
is($city{'2026-11-20T00:00:00.000000Z|x\\\\'}{group}{city}, 'x\\', 'and so is a backslash');
wait_until(sub { $produced_at->('by_city_store') eq 't' }, 'the day of by_city_store produced');
my %pipes = map { $_->{key} => decode_json($_->{value}) } @{ kcat_consume($broker, 'pipe-results') };
is(join(' ', map { "$_=$pipes{$_}{total_sales}" } sort keys %pipes),
	'2026-11-20T00:00:00.000000Z|Madrid|ST-1=15.50 2026-11-20T00:00:00.000000Z|a\\|b|c=2.00 '
	  . '2026-11-20T00:00:00.000000Z|a|b\\|c=3.00 2026-11-20T00:00:00.000000Z|x\\\\|y=4.00',
	'groups whose values hold the separator have keys of their own');
is($produced_at->('big_by_seller'), 'f', 'the window with the result too large is not produced');
is(scalar @{ kcat_consume($broker, 'big-results') }, 0, 'nothing of it in its topic');
wait_until(sub { slurp_file($node->logfile) =~ /WARNING:  pg_kappa stream worker: Kafka refused the final results of 1 window\(s\)/ },
	'the refusal in the log');
like(slurp_file($node->logfile),
	qr/DETAIL:  First: ranking "big_by_seller", window starting 2026-11-20 00:00:00\+00: Broker: Message size too large\.\n.*HINT:  Raise message.max.bytes in kappa.kafka_options/,
	'which window, why, and what to do');
is($node->safe_psql('shop', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_kappa stream worker'}),
	$pid, 'the stream worker kept running');

# A larger limit: the producer is made anew and the window goes at once.
$node->append_conf('postgresql.conf', "kappa.kafka_options = 'message.max.bytes=4000000'");
$node->reload;
wait_until(sub { $produced_at->('big_by_seller') eq 't' }, 'the refused window produced with the new limit');
my %big = map { $_->{key} => decode_json($_->{value}) } @{ kcat_consume($broker, 'big-results') };
is(length($big{'2026-11-20T00:00:00.000000Z|Madrid|S-1'}{item}{seller_name} // ''), 1_200_000,
	'the large result, whole');
is($big{'2026-11-20T00:00:00.000000Z|Madrid|S-2'}{total_sales}, '5.50', 'and the rest of its window');

$node->stop;
done_testing();
