# The SOAP poller fails after Kafka acknowledged a page but before the
# transaction that records the page commits (a trigger on kappa.soap_state
# throws once, which is what a crash at that point leaves behind: sent, not
# recorded).  The poller reports the error, backs off, fetches the page again
# and sends it again; the watermark ends where it would have, every
# confirmation is in the topic (the resent ones identical), and downstream
# kappa.payments and kappa.payment_history hold each confirmation once.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;
use PgKappa::Soap;

my $password = 's3cr3t-Kappa-Pw';
my $broker = start_dev_broker(topics => [ 'payment-confirmations:1', 'sales-events:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
my $soap = start_soap_server(username => 'kappa', password => $password);
my $secrets = write_secrets(PostgreSQL::Test::Utils::tempdir() . '/kappa.secrets',
	"soap.password = $password\n");
my $node = kappa_node('soap_commit', $broker, conf => qq{
kappa.soap_username = 'kappa'
kappa.secrets_file = '$secrets'
kappa.soap_poll_interval = '1h'
kappa.soap_max_backoff = '2s'
kappa.cdc_enabled = off
kappa.csv_enabled = off
});

my $url = $soap->url('fixtures');
# The first recording of a page fails; nextval() is not undone by the abort.
$node->safe_psql('shop', qq{
CREATE SEQUENCE public.soap_fail;
CREATE FUNCTION public.soap_fail_once() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    IF NEW.last_success_at IS DISTINCT FROM OLD.last_success_at
       AND nextval('public.soap_fail') = 1 THEN
        RAISE EXCEPTION 'injected failure: a page acknowledged by Kafka was not recorded';
    END IF;
    RETURN NEW;
END \$\$;
CREATE TRIGGER soap_fail_once BEFORE UPDATE ON kappa.soap_state
    FOR EACH ROW EXECUTE FUNCTION public.soap_fail_once();
INSERT INTO kappa.soap_state (endpoint, since) VALUES ('$url', '2026-11-21T10:00:00Z');});

set_soap_conf($node, soap_url => $url);
wait_until(sub { $node->safe_psql('shop', qq{
SELECT (since AT TIME ZONE 'UTC')::text || '|' || since_payment_ids::text || '|' || coalesce(page_token, '<null>')
  FROM kappa.soap_state WHERE endpoint = '$url'}) eq '2026-11-21 11:02:00|{PAY-000003}|<null>' },
	'the poll to complete after the failure');
pass('the watermark ends at the latest confirmation, paging done');

my $st = soap_status($node);
is($st->{errors}, 1, 'one error in kappa.stat_sources');
like($st->{last_error}, qr/injected failure: a page acknowledged by Kafka was not recorded/,
	'its message names the failure');
is($node->safe_psql('shop', q{SELECT last_value FROM public.soap_fail}), '3',
	'three recordings: the failed one, then page 1 again and page 2');

# The topic: the first page twice (sent, not recorded, sent again), identical.
my (%copies, %content);
for my $m (@{ consume_all($broker, 'payment-confirmations') })
{
	my $id = decode_json($m->{value})->{after}{payment_id};
	(my $c = $m->{value}) =~ s/,"ts_ms":\d+\}$/}/;
	$copies{$id}++;
	$content{$id}{$c}++;
}
is(join(',', map { "$_=$copies{$_}" } sort keys %copies), 'PAY-000001=2,PAY-000002=2,PAY-000003=1',
	'the first page was sent twice, the second once');
is(join(',', map { scalar(keys %{ $content{$_} }) } sort keys %content), '1,1,1',
	'a confirmation sent again is identical');

# Downstream: each confirmation once.
wait_until(sub { $node->safe_psql('shop', q{
SELECT coalesce(sum(messages), 0) FROM kappa.stream_worker_status()}) eq '5' },
	'the stream worker to consume the 5 messages');
is($node->safe_psql('shop', q{
SELECT string_agg(payment_id || ':' || status || ':' || sale_id, ',' ORDER BY payment_id)
  FROM kappa.payment_history}),
	'PAY-000001:CONFIRMED:1001,PAY-000002:DECLINED:1002,PAY-000003:REFUNDED:1003',
	'kappa.payment_history has each confirmation once');
is($node->safe_psql('shop', q{
SELECT string_agg(sale_id || ':' || status, ',' ORDER BY sale_id) FROM kappa.payments}),
	'1001:CONFIRMED,1002:DECLINED,1003:REFUNDED', 'kappa.payments: the latest status per sale');

done_testing();
