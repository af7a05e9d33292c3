# A results topic whose leader is slow to acknowledge holds back no other
# ranking's results.  Ranking a_hours produces to res-a, whose partition's
# leader (broker 2) answers produce requests 45 s late; b_hours, on the
# same events, produces to res-b on broker 1.  Both have 600 windows made
# final at once, a_hours' first in the order the worker takes them: more
# than the 500 windows a worker keeps in flight, so past that it must take
# b_hours' windows and leave a_hours' remaining ones.  b_hours' windows are
# all produced and marked while a_hours' are still waiting (before 0.1.5
# the worker produced nothing more while any window was in flight, so
# b_hours waited for a_hours' acknowledgements, or for their timeout).
# Then a_hours' are acknowledged too, each window's result exactly once in
# its topic.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use POSIX qw(strftime);
use Time::Local qw(timegm);
use PgKappa::Test;

my @topics = ('sales-events', 'payment-confirmations', 'top-sales-by-city',
	'top-salesman-by-country', 'sales-hand', 'res-a', 'res-b');
my $broker = start_dev_broker(brokers => 2, topics => [ map { "$_:1" } @topics ]);
$broker->control("leader $_ 0 " . ($_ eq 'res-a' ? 2 : 1)) for @topics;

# request.timeout.ms past the delay: the late answers are waited for, not
# retried
my $node = kappa_node('emit_slow', $broker, conf => q{
kappa.idle_timeout = '1h'
kappa.default_grace = 0
kappa.window_time_zone = 'UTC'
kappa.stream_batch_ms = 20
kappa.cdc_enabled = off
kappa.kafka_options = 'request.timeout.ms=120000'
});
$node->safe_psql('shop', q{
SELECT kappa.create_ranking('a_hours', ARRAY['city'], '1 hour', source_topic => 'sales-hand',
                            window_origin => '2026-01-01 00:00+00', results_topic => 'res-a');
SELECT kappa.create_ranking('b_hours', ARRAY['city'], '1 hour', source_topic => 'sales-hand',
                            window_origin => '2026-01-01 00:00+00', results_topic => 'res-b');
});

# 602 sales an hour apart: the 602nd makes the first 601 hours final
my $lsn = 0x1000;
my @sales;
my $origin = timegm(0, 0, 0, 1, 0, 2026);
for my $i (0 .. 601)
{
	$lsn += 0x100;
	my $at = strftime('%Y-%m-%dT%H:30:00Z', gmtime($origin + $i * 3600));
	push @sales, [ $i, sprintf('{"op":"c","before":null,"after":{"sale_id":"%d","store_id":"ST-1","seller_id":"S-1","seller_name":"Seller","city":"Madrid","country":"ES","amount":"1.00","currency":"EUR","sold_at":"%s"},"source":{"connector":"postgres","lsn":"0/%X","seq":0},"ts_ms":1}',
		$i, $at, $lsn) ];
}
my $produced = q{
SELECT string_agg(ranking || '=' || n, ',' ORDER BY ranking) FROM (
  SELECT ranking, count(*) FILTER (WHERE produced_at IS NOT NULL) AS n
    FROM kappa.ranking_windows WHERE ranking IN ('a_hours', 'b_hours') AND is_final
   GROUP BY ranking) s};

# The first hour's results go out at once: the producer then knows both
# topics' leaders.  (Kafka answers a connection's requests in order, so a
# metadata request sent to the slow broker would wait behind its produce
# requests, for res-b too.)
kcat_produce($broker, 'sales-hand', [ @sales[0, 1] ]);
wait_until(sub { $node->safe_psql('shop', $produced) eq 'a_hours=1,b_hours=1' },
	"the first hour's results acknowledged");

# broker 2 answers its next produce request 45 s late (and the ones sent
# after it on the same connection, which Kafka answers in order)
$broker->control('produce-delay 2 45000 1');
kcat_produce($broker, 'sales-hand', [ @sales[2 .. 601] ]);
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM kappa.ranking_windows WHERE ranking IN ('a_hours', 'b_hours') AND is_final}) eq '1202' },
	'601 final windows of each ranking');

# Well within the 45 s that a_hours' acknowledgements take.
wait_until(sub { $node->safe_psql('shop', $produced) =~ /b_hours=601/ },
	"b_hours' windows produced while a_hours' wait", 35);
is($node->safe_psql('shop', $produced), 'a_hours=1,b_hours=601',
	"every window of b_hours is produced and marked while a_hours' are not acknowledged yet");
is(kcat_high_watermark($broker, 'res-b', 0), '601', 'res-b holds one result per window');

# The late answers come: a_hours' windows are marked too, each once.
wait_until(sub { $node->safe_psql('shop', $produced) eq 'a_hours=601,b_hours=601' },
	"a_hours' windows acknowledged");
is(kcat_high_watermark($broker, 'res-a', 0), '601', 'res-a holds one result per window');
my %keys;
$keys{ $_->{key} }++ for @{ kcat_consume($broker, 'res-a') };
is(scalar(keys %keys) . ' keys, at most ' . (sort { $b <=> $a } values %keys)[0] . ' each', '601 keys, at most 1 each',
	'a_hours: every window once, none twice');
ok($node->log_contains(qr/Kafka has not acknowledged the final results of \d+ window\(s\) yet/),
	'the log says windows wait for their acknowledgement');

done_testing();
