# The message key names the row a sale event is about.  A key object with
# one member ({"sale_id":7}, as Debezium writes it) is that member's value;
# a composite primary key ({"b":"x","a":1}, as the publisher writes it) is
# the key as sent, so rows that share their first column stay apart (they
# were taken for one row, and the second insert for an update of the first).
# Also: kappa.stream_batch_size follows a reload.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [
	'sales-events:1', 'payment-confirmations:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
my $node = kappa_node('keys', $broker, conf => q{
kappa.idle_timeout = '1h'
kappa.stream_batch_ms = 20
kappa.cdc_enabled = off
});

sub sale
{
	my ($op, $id, $amount) = @_;
	return sprintf('{"op":"%s","before":null,"after":{"sale_id":"%s","store_id":"ST-1","seller_id":"S-1","seller_name":"Ana","city":"Madrid","country":"ES","amount":"%s","currency":"EUR","sold_at":"2026-11-20T10:00:00Z"},"source":{"connector":"test"},"ts_ms":1}',
		$op, $id, $amount);
}
kcat_produce($broker, 'sales-events', [
	[ '{"b":"x","a":1}', sale('c', 'x1', '10.00') ],
	[ '{"b":"x","a":2}', sale('c', 'x2', '5.00') ],
	[ '{"sale_id":7}', sale('c', '7', '1.00') ],
	[ '7', sale('u', '7', '2.00') ],                    # the same row as {"sale_id":7}
	[ '{"b":"x","a":2}', sale('u', 'x2', '6.00') ],
	[ '{"sale_id":{"n":1}}', sale('c', '8', '100.00') ],  # no usable key
]);
wait_until(sub { $node->safe_psql('shop', 'SELECT sum(messages) FROM kappa.stream_worker_status()') eq '6' },
	'the six events consumed');
is($node->safe_psql('shop', q{SELECT string_agg(key, ' ' ORDER BY key) FROM kappa.stream_rows}),
	'7 {"b":"x","a":1} {"b":"x","a":2}', 'three rows remembered, under their keys');
is($node->safe_psql('shop', q{SELECT total || ' ' || sale_count FROM kappa.ranking_results
 WHERE ranking = 'top_sales_by_city' AND group_values = '{Madrid}'}),
	'18.00 3', 'each counted once, as last changed: 10.00 + 6.00 + 2.00');
like($node->safe_psql('shop', q{SELECT error FROM kappa.dead_letters}),
	qr/message has no usable key/, 'a key object whose one member is an object is a dead letter');

# kappa.stream_batch_size follows a reload (it took a restart): at 2, ten
# events are at least five batches.
my $batches = $node->safe_psql('shop', 'SELECT batches FROM kappa.stream_worker_status()');
my $log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "kappa.stream_batch_size = 2\nkappa.stream_batch_ms = 1000");
$node->reload;
wait_until(sub { slurp_file($node->logfile, $log_offset) =~ /stream worker 0: batches of at most 2 messages from now on/ },
	'the worker to take the reload');
kcat_produce($broker, 'sales-events', [ map { [ "9$_", sale('c', "9$_", '1.00') ] } 0 .. 9 ]);
wait_until(sub { $node->safe_psql('shop', 'SELECT sum(messages) FROM kappa.stream_worker_status()') eq '16' },
	'the ten events consumed');
cmp_ok($node->safe_psql('shop', 'SELECT batches FROM kappa.stream_worker_status()') - $batches, '>=', 5,
	'in batches of at most two');
is($node->safe_psql('shop', q{SELECT total || ' ' || sale_count FROM kappa.ranking_results
 WHERE ranking = 'top_sales_by_city' AND group_values = '{Madrid}'}), '28.00 13', 'all counted');

$node->stop;
done_testing();
