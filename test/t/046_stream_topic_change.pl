# A topic the stream worker stops reading while it holds messages of it: a
# reload gives kappa.payments_topic another name, and a confirmation of the
# old topic already in the worker's batch must not have its offset stored
# as if it were applied.  Set back, the worker reads it again and applies
# it.  Before 0.1.5 it was skipped with its offset stored, and lost.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [ 'sales-events:1', 'payment-confirmations:1', 'payments-v2:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
my $node = kappa_node('topicchange', $broker, conf => q{
kappa.idle_timeout = '1h'
kappa.default_grace = '3650d'
kappa.stream_batch_ms = 20
kappa.cdc_enabled = off
});

sub payment
{
	my ($pay, $sale) = @_;
	return [ $sale, qq({"op":"c","before":null,"after":{"payment_id":"$pay","sale_id":"$sale","status":"CONFIRMED","amount":"1.00","currency":"EUR","confirmed_at":"2026-11-21T10:05:00Z"},"source":{"connector":"test"},"ts_ms":1}) ];
}

my $payments_offset = sub {
	$node->safe_psql('shop', q{SELECT coalesce(max(next_offset), -1) FROM kappa.stream_offsets WHERE topic = 'payment-confirmations'});
};

kcat_produce($broker, 'payment-confirmations', [ payment('PAY-1', 1001) ]);
wait_until(sub { $node->safe_psql('shop', q{SELECT count(*) FROM kappa.payments}) eq '1' }, 'the first payment applied');
is($payments_offset->(), '1', 'its offset stored');

# A confirmation held in the worker's batch (batches of 10 s now), then a
# reload that renames the payments topic and changes the batch size: the
# worker applies what it holds at once, under the new settings, in which
# nothing reads the confirmation's topic any more.
my $acted = sub {
	my ($size) = @_;
	wait_until(sub { slurp_file($node->logfile) =~ /stream worker 0: batches of at most $size messages from now on/ },
		"the worker to act on the reload (batch size $size)");
};
$node->safe_psql('postgres', q{ALTER SYSTEM SET kappa.stream_batch_ms = '10s'});
$node->safe_psql('postgres', q{ALTER SYSTEM SET kappa.stream_batch_size = 5000});
$node->safe_psql('postgres', q{SELECT pg_reload_conf()});
$acted->(5000);
kcat_produce($broker, 'payment-confirmations', [ payment('PAY-2', 1002) ]);
sleep 1;    # (for the worker to take it into its batch)
$node->safe_psql('postgres', q{ALTER SYSTEM SET kappa.payments_topic = 'payments-v2'});
$node->safe_psql('postgres', q{ALTER SYSTEM SET kappa.stream_batch_size = 4000});
$node->safe_psql('postgres', q{SELECT pg_reload_conf()});
$acted->(4000);
is($payments_offset->(), '1', 'the offset of the old topic did not move past the confirmation not applied');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.payments}), '1', 'and it is not applied');

# Set back: the confirmation is read again, and applied.
$node->safe_psql('postgres', q{ALTER SYSTEM RESET kappa.payments_topic});
$node->safe_psql('postgres', q{ALTER SYSTEM RESET kappa.stream_batch_ms});
$node->safe_psql('postgres', q{SELECT pg_reload_conf()});
wait_until(sub { $node->safe_psql('shop', q{SELECT string_agg(payment_id, ',' ORDER BY payment_id) FROM kappa.payments}) eq 'PAY-1,PAY-2' },
	'the confirmation applied once the topic is read again');
is($payments_offset->(), '2', 'and its offset stored');

$node->stop;
done_testing();
