# Payment confirmations enrich sales: kappa.payments keeps each sale's
# latest status (by confirmation time, whatever the arrival order), and a
# confirmed-only ranking counts a sale once its payment is CONFIRMED and
# retracts it on REFUNDED, whether the sale or the confirmation comes first,
# also when another worker applies the sale at the same time.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [ 'sales-events:2', 'payment-confirmations:2' ]);
my $node = kappa_node('payments', $broker, conf => q{
kappa.idle_timeout = '1h'
kappa.default_grace = '3650d'
kappa.stream_batch_ms = 20
kappa.cdc_enabled = off
});
$node->safe_psql('shop', q{SELECT kappa.create_ranking('confirmed_sales_by_city', ARRAY['city'], '1 day',
                                                      calendar => true, confirmed_only => true)});

sub sale
{
	my ($id, $city, $amount) = @_;
	return [ $id, qq({"op":"c","before":null,"after":{"sale_id":"$id","store_id":"ST","seller_id":"S-1","seller_name":"Ana","city":"$city","country":"ES","amount":"$amount","currency":"EUR","sold_at":"2026-11-21T10:00:00Z"},"source":{"connector":"test"}}) ];
}

sub payment
{
	my ($pay, $sale, $status, $amount, $at) = @_;
	return [ $sale, qq({"op":"c","before":null,"after":{"payment_id":"$pay","sale_id":"$sale","status":"$status","amount":"$amount","currency":"EUR","confirmed_at":"$at"},"source":{"connector":"soap","endpoint":"http://pay","page":""},"ts_ms":1}) ];
}

sub applied
{
	my ($sql, $want, $what) = @_;
	wait_until(sub { $node->safe_psql('shop', $sql) eq $want }, $what);
	return;
}

# a confirmation before its sale
kcat_produce($broker, 'payment-confirmations', [ payment('PAY-5', 1005, 'CONFIRMED', '7.00', '2026-11-21T10:05:00Z') ]);
applied(q{SELECT status FROM kappa.payments WHERE sale_id = '1005'}, 'CONFIRMED', 'confirmation stored');

# sales
kcat_produce($broker, 'sales-events', [
	sale(1001, 'Madrid', '100.00'), sale(1002, 'Madrid', '50.00'), sale(1003, 'Lisboa', '30.00'),
	sale(1004, 'Lisboa', '20.00'), sale(1005, 'Madrid', '7.00') ]);
applied(q{SELECT count(*) FROM kappa.stream_rows}, '5', 'sales consumed');

# confirmations after their sales; a refund; statuses arriving out of order;
# the same confirmation twice
kcat_produce($broker, 'payment-confirmations', [
	payment('PAY-1', 1001, 'CONFIRMED', '100.00', '2026-11-21T10:01:00Z'),
	payment('PAY-2', 1002, 'DECLINED', '50.00', '2026-11-21T10:02:00Z'),
	payment('PAY-3', 1003, 'CONFIRMED', '30.00', '2026-11-21T10:03:00Z'),
	payment('PAY-3', 1003, 'REFUNDED', '-30.00', '2026-11-21T11:00:00Z'),
	payment('PAY-4', 1004, 'REFUNDED', '-20.00', '2026-11-21T12:00:00Z'),
	payment('PAY-4', 1004, 'CONFIRMED', '20.00', '2026-11-21T10:04:00Z'),
	payment('PAY-1', 1001, 'CONFIRMED', '100.00', '2026-11-21T10:01:00Z') ]);
applied(q{SELECT count(*) FROM kappa.payment_history}, '7', 'confirmations consumed');

is($node->safe_psql('shop', q{SELECT string_agg(sale_id || '=' || status, ',' ORDER BY sale_id) FROM kappa.payments}),
	'1001=CONFIRMED,1002=DECLINED,1003=REFUNDED,1004=REFUNDED,1005=CONFIRMED',
	'latest status per sale, by confirmation time');
is($node->safe_psql('shop', q{SELECT string_agg(group_values[1] || '=' || total || '/' || sale_count, ',' ORDER BY group_values[1])
  FROM kappa.ranking_results WHERE ranking = 'confirmed_sales_by_city'}),
	'Madrid=107.00/2', 'confirmed-only ranking: confirmed sales only, refunds retracted');
is($node->safe_psql('shop', q{SELECT string_agg(group_values[1] || '=' || total || '/' || sale_count, ',' ORDER BY group_values[1])
  FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city'}),
	'Lisboa=50.00/2,Madrid=157.00/3', 'the ordinary ranking counts every sale');
is($node->safe_psql('shop', q{SELECT string_agg(sale_id || ':' || payment_status, ',' ORDER BY sale_id) FROM kappa.sales_enriched}),
	'1001:CONFIRMED,1002:DECLINED,1003:REFUNDED,1004:REFUNDED,1005:CONFIRMED', 'kappa.sales_enriched');

# a late confirmation of the declined sale counts it; a malformed one is a dead letter
kcat_produce($broker, 'payment-confirmations', [
	payment('PAY-2b', 1002, 'CONFIRMED', '50.00', '2026-11-21T13:00:00Z'),
	payment('PAY-x', 1002, 'MAYBE', '1.00', '2026-11-21T13:01:00Z') ]);
applied(q{SELECT total FROM kappa.ranking_results WHERE ranking = 'confirmed_sales_by_city' AND group_values = '{Madrid}'},
	'157.00', 'the newly confirmed sale counted');
like($node->safe_psql('shop', q{SELECT error FROM kappa.dead_letters WHERE topic = 'payment-confirmations'}),
	qr/unknown payment status/, 'a confirmation with an unknown status is a dead letter');

# A confirmation whose sale_id is not its key (sale 1004 under key 1003) is
# a dead letter, also when a message of the same batch is about sale 1004:
# before, it was stored as sale 1004's payment and counted sale 1003.
kcat_produce($broker, 'payment-confirmations', [
	[ 1003, payment('PAY-4c', 1004, 'CONFIRMED', '20.00', '2026-11-21T14:00:00Z')->[1] ],
	payment('PAY-4d', 1004, 'DECLINED', '20.00', '2026-11-21T13:30:00Z') ]);
applied(q{SELECT status FROM kappa.payments WHERE sale_id = '1004'}, 'DECLINED', 'the genuine confirmation of 1004 applied');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.dead_letters WHERE error = 'the sale id of the confirmation differs from the message key'}),
	'1', 'the other is a dead letter');
is($node->safe_psql('shop', q{SELECT string_agg(group_values[1] || '=' || total || '/' || sale_count, ',' ORDER BY group_values[1])
  FROM kappa.ranking_results WHERE ranking = 'confirmed_sales_by_city'}),
	'Madrid=157.00/3', 'and counts no sale');

# A sale and its confirmation applied at the same time by two workers (the
# topics' partitions are shared out among kappa.stream_workers): the sale's
# worker sees no payment yet, the payment's worker no sale yet, and before,
# both committed and the sale never counted.  The sale's batch is played
# here by a session that writes its row, as that worker would, and holds
# its transaction open while the confirmation arrives.  The confirmation's
# batch now writes a deleted row for the key, so the two collide on it:
# this worker waits for the session, fails on the key when it commits, and
# applies its batch again, seeing the sale, which then counts.  It does so
# in the same process: before, it exited and was restarted, and its
# partitions waited for the group to notice.
my $worker_pid = $node->safe_psql('shop', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_kappa stream worker'});
my $log_offset = -s $node->logfile;
my $session = $node->background_psql('shop');
$session->query_safe('BEGIN');
$session->query_safe(q{
INSERT INTO kappa.stream_rows (topic, key, row_data, windows_end)
VALUES ('sales-events', '1009', '{"sale_id":"1009","store_id":"ST","seller_id":"S-1","seller_name":"Ana","city":"Sevilla","country":"ES","amount":"9.00","currency":"EUR","sold_at":"2026-11-21T10:00:00Z"}',
        '2026-11-22T00:00:00Z')});
kcat_produce($broker, 'payment-confirmations', [ payment('PAY-9', 1009, 'CONFIRMED', '9.00', '2026-11-21T10:09:00Z') ]);
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_kappa stream worker' AND wait_event_type = 'Lock'}) eq '1' },
	'the confirmation\'s worker to wait for the sale\'s row');
$session->query_safe('COMMIT');
$session->quit;
applied(q{SELECT total FROM kappa.ranking_results WHERE ranking = 'confirmed_sales_by_city' AND group_values = '{Sevilla}'},
	'9.00', 'the sale confirmed while its own batch was in flight counted once it committed');
is($node->safe_psql('shop', q{SELECT status FROM kappa.payments WHERE sale_id = '1009'}), 'CONFIRMED',
	'the confirmation stored once');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.payment_history WHERE payment_id = 'PAY-9'}), '1',
	'and in the history once');
is($node->safe_psql('shop', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_kappa stream worker'}),
	$worker_pid, 'the worker applied the batch again without exiting');
like(substr(slurp_file($node->logfile), $log_offset),
	qr/LOG:  pg_kappa stream worker 0: applying a batch of 1 messages again after a conflict with another transaction\n.*DETAIL:  duplicate key value violates unique constraint "stream_rows_pkey"/,
	'and said why');

# A confirmation is late only once the sale's window is final, whatever the
# times of the confirmations before it.  With 10 minutes of grace: a sale
# at 23:58, a confirmation of another sale at 00:12 the next day, then the
# sale's own at 23:59, both on one partition of the payments topic.  The
# day is still open (the sales have not passed it), so the sale counts.
$node->safe_psql('shop', q{SELECT kappa.create_ranking('confirmed_tight', ARRAY['city'], '1 day',
                                                      calendar => true, confirmed_only => true,
                                                      grace => interval '10 minutes')});
kcat_produce($broker, 'sales-events', [ [ 1010, sale(1010, 'Cadiz', '5.00')->[1] =~ s/2026-11-21T10:00:00Z/2026-11-21T23:58:00Z/r ] ]);
applied(q{SELECT count(*) FROM kappa.stream_rows WHERE key = '1010'}, '1', 'the late-evening sale consumed');
kcat_produce($broker, 'payment-confirmations', [
	payment('PAY-11', 1011, 'CONFIRMED', '1.00', '2026-11-22T00:12:00Z'),
	payment('PAY-10', 1010, 'CONFIRMED', '5.00', '2026-11-21T23:59:00Z') ], partition => 0);
applied(q{SELECT status FROM kappa.payments WHERE sale_id = '1010'}, 'CONFIRMED', 'its confirmation stored');
is($node->safe_psql('shop', q{SELECT string_agg(group_values[1] || '=' || total, ',') FROM kappa.ranking_results WHERE ranking = 'confirmed_tight'}),
	'Cadiz=5.00', 'the sale counts: its day is open');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.late_events WHERE ranking = 'confirmed_tight'}), '0',
	'and the confirmation is not a late event');

# A sale a confirmed-only ranking cannot count (its store_id, grouped by
# here, is beyond the 1000-byte limit) is a dead letter when it arrives,
# paid or not: before, it was remembered, counted by the other rankings, and
# silently never counted in this one when its confirmation came.
$node->safe_psql('shop', q{SELECT kappa.create_ranking('confirmed_by_store', ARRAY['store_id'], '1 day',
                                                      calendar => true, confirmed_only => true)});
my $long_store = 'S' x 1100;
kcat_produce($broker, 'sales-events', [ [ 1020, sale(1020, 'Toledo', '4.00')->[1] =~ s/"store_id":"[^"]*"/"store_id":"$long_store"/r ] ]);
applied(q{SELECT count(*) FROM kappa.dead_letters WHERE error LIKE 'ranking "confirmed_by_store": %'}, '1',
	'the sale is a dead letter for the confirmed-only ranking');
like($node->safe_psql('shop', q{SELECT error FROM kappa.dead_letters WHERE error LIKE 'ranking "confirmed_by_store": %'}),
	qr/the group-by values are longer than 1000 bytes together/, 'saying why');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.stream_rows WHERE key = '1020'}), '0', 'and not remembered');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.ranking_results WHERE group_values = '{Toledo}'}), '0',
	'nor counted anywhere');

# Statuses of one time: REFUNDED over CONFIRMED over DECLINED (then the
# greater payment id), whatever the order they arrive in.  Before 0.1.5 the
# later message won, so a confirmation sent again after its refund (as
# overlapping polls of the SOAP service do) counted the refunded sale again.
# All on partition 0, then a sentinel: once it is stored, all were applied.
kcat_produce($broker, 'sales-events', [ sale(1030, 'Zaragoza', '3.00'), sale(1031, 'Zaragoza', '4.00') ]);
applied(q{SELECT count(*) FROM kappa.stream_rows WHERE key IN ('1030', '1031')}, '2', 'the two sales consumed');
kcat_produce($broker, 'payment-confirmations', [
	payment('PAY-30', 1030, 'CONFIRMED', '3.00', '2026-11-21T15:00:00Z'),
	payment('PAY-30', 1030, 'REFUNDED', '-3.00', '2026-11-21T15:00:00Z'),
	payment('PAY-30', 1030, 'CONFIRMED', '3.00', '2026-11-21T15:00:00Z'),
	payment('PAY-31', 1031, 'DECLINED', '4.00', '2026-11-21T15:00:00Z'),
	payment('PAY-31', 1031, 'CONFIRMED', '4.00', '2026-11-21T15:00:00Z'),
	payment('PAY-31', 1031, 'DECLINED', '4.00', '2026-11-21T15:00:00Z'),
	payment('PAY-39', 1039, 'CONFIRMED', '1.00', '2026-11-21T15:00:00Z') ], partition => 0);
applied(q{SELECT count(*) FROM kappa.payments WHERE sale_id = '1039'}, '1', 'the sentinel stored');
is($node->safe_psql('shop', q{SELECT string_agg(sale_id || '=' || status, ',' ORDER BY sale_id) FROM kappa.payments WHERE sale_id IN ('1030', '1031')}),
	'1030=REFUNDED,1031=CONFIRMED', 'of one time, the refund and the confirmation win, however often the others come');
is($node->safe_psql('shop', q{SELECT total || '/' || sale_count FROM kappa.ranking_results
 WHERE ranking = 'confirmed_sales_by_city' AND group_values = '{Zaragoza}'}),
	'4.00/1', 'the confirmed-only ranking counts the confirmed sale, not the refunded one');

$node->stop;
done_testing();
