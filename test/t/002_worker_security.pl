# Nobody gets a superuser's rights through pg_kappa's own statements, and
# refused settings do not put their secrets in the server log.
#
#  - The workers run as the bootstrap superuser.  A role allowed to create
#    objects in public (the default search_path) defines unnest(text[]) and
#    "=" (regclass, oid), exact matches that PostgreSQL would prefer to
#    pg_catalog's unnest(anyarray) and oid = oid; the stream worker applies
#    sales and payments (statements over unnest of text[] arrays) and must
#    never call them.
#  - kappa.publish_table() and kappa.unpublish_table() write their catalog
#    as the extension's owner; a caller with REPLICATION who owns a table
#    and puts a schema of their own first in search_path must not get their
#    operator called there.
#  - kappa.kafka_options with a password and kappa.soap_url with
#    credentials, set in postgresql.conf and reloaded, are refused without
#    the value in the log; so is a secrets file line too long to read.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [ 'sales-events:1', 'payment-confirmations:1' ]);
my $node = kappa_node('security', $broker, conf => qq{
kappa.stream_batch_ms = 50
kappa.idle_timeout = '1h'
});

# what the traps record, when called, and the roles that set them
$node->safe_psql('shop', q{
CREATE TABLE public.trap_calls (who text, at timestamptz DEFAULT now());
GRANT INSERT ON public.trap_calls TO PUBLIC;
CREATE ROLE mallory LOGIN;
GRANT CREATE ON SCHEMA public TO mallory;
CREATE ROLE rep LOGIN REPLICATION;
CREATE SCHEMA evil AUTHORIZATION rep;
GRANT EXECUTE ON FUNCTION kappa.publish_table(regclass, text), kappa.unpublish_table(regclass) TO rep;
});

# ---- the workers' search_path -----------------------------------------------
$node->safe_psql('shop', q{
SET ROLE mallory;
CREATE FUNCTION public.unnest(a text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.trap_calls (who) VALUES (current_user || ' unnest');
    IF current_user <> 'mallory' THEN
        EXECUTE 'ALTER ROLE mallory SUPERUSER';
    END IF;
    RETURN QUERY SELECT x FROM pg_catalog.unnest(a::anyarray) x;
END $$;
});
# the trap works: a session of mallory's own falls into it
is($node->safe_psql('shop', q{SET ROLE mallory; SELECT count(*) FROM unnest(ARRAY['a', 'b']::text[])}),
	'2', 'the trap is in mallory\'s search_path');
is($node->safe_psql('shop', q{SELECT count(*) FROM public.trap_calls}), '1', 'and records its call');
$node->safe_psql('shop', q{TRUNCATE public.trap_calls});

my $sale = sub {
	my ($id, $city, $amount) = @_;
	return [ $id, qq({"op":"c","before":null,"after":{"sale_id":"$id","store_id":"ST-1","seller_id":"S-1","seller_name":"Ana","city":"$city","country":"ES","amount":"$amount","currency":"EUR","sold_at":"2026-11-20T10:00:00Z"},"source":{"connector":"test"},"ts_ms":1}) ];
};
kcat_produce($broker, 'sales-events', [ $sale->(1, 'Madrid', '10.00'), $sale->(2, 'Vigo', '5.50') ]);
kcat_produce($broker, 'payment-confirmations', [
	[ '1', '{"op":"c","before":null,"after":{"payment_id":"P-1","sale_id":"1","status":"CONFIRMED","amount":"10.00","currency":"EUR","confirmed_at":"2026-11-20T10:01:00Z"},"source":{"connector":"soap"},"ts_ms":1}' ] ]);
my $applied = q{SELECT (SELECT string_agg(group_values[1] || '=' || total, ',' ORDER BY group_values)
                          FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city')
                    || '/' || (SELECT string_agg(sale_id || '=' || status, ',') FROM kappa.payments)};
wait_until(sub { $node->safe_psql('shop', $applied) eq 'Madrid=10.00,Vigo=5.50/1=CONFIRMED' },
	'sales and payment applied');
is($node->safe_psql('shop', q{SELECT count(*) FROM public.trap_calls}), '0',
	'the stream worker never called public.unnest(text[])');
is($node->safe_psql('shop', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'}), 'f',
	'mallory is no superuser');

# ---- publish_table under the caller's search_path ----------------------------
$node->safe_psql('shop', q{
SET ROLE rep;
CREATE TABLE evil.mine (id int PRIMARY KEY, v text);
CREATE FUNCTION evil.regclass_eq_oid(regclass, oid) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.trap_calls (who) VALUES (current_user || ' =');
    IF current_user <> 'rep' THEN
        EXECUTE 'ALTER ROLE rep SUPERUSER';
    END IF;
    RETURN $1::oid OPERATOR(pg_catalog.=) $2;
END $$;
CREATE OPERATOR evil.= (LEFTARG = regclass, RIGHTARG = oid, FUNCTION = evil.regclass_eq_oid);
});
my ($ret, $out, $err) = $node->psql('shop', q{
SET ROLE rep;
SET search_path = evil, public;
SELECT kappa.publish_table('evil.mine');
SELECT kappa.publish_table('evil.mine');
SELECT kappa.unpublish_table('evil.mine');
});
is($ret, 0, 'rep publishes and unpublishes its table') or diag($err);
is($node->safe_psql('shop', q{SELECT count(*) FROM public.trap_calls}), '0',
	'kappa.publish_table() never called evil.=');
is($node->safe_psql('shop', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'rep'}), 'f',
	'rep is no superuser');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.published_tables}), '0', 'nothing left published');

# ---- snapshot rows only from kappa.publish_table() ---------------------------
my $log_offset;
# Anyone may call pg_logical_emit_message().  A message with the snapshot
# rows' prefix from mallory must not become an event in the topic, and a
# malformed one must not stop the publisher (0.1.5; before, the first went
# to Kafka as an "r" event of public.sales, the second stopped decoding for
# good).
$node->safe_psql('shop', q{
CREATE TABLE public.sales (sale_id bigint PRIMARY KEY, store_id text NOT NULL, seller_id text NOT NULL,
    seller_name text, city text, country text, amount numeric(12,2), currency text, sold_at timestamptz);
SELECT kappa.publish_table('public.sales');
INSERT INTO public.sales VALUES (7, 'ST-1', 'S-1', 'Ana', 'Madrid', 'ES', 1.00, 'EUR', '2026-11-20 10:00+00');
});
my $relid = $node->safe_psql('shop', q{SELECT 'public.sales'::regclass::oid});
my $forged = unpack('H*', pack('VVVV', 1, $relid, 4, 0) . '9999'
	  . '{"sale_id":"9999","store_id":"ST-1","seller_id":"S-1","seller_name":"Eve","city":"Madrid","country":"ES","amount":"1000000.00","currency":"EUR","sold_at":"2026-11-20T10:00:00.000000Z"}');
$log_offset = -s $node->logfile;
$node->safe_psql('shop', qq{SET ROLE mallory;
SELECT pg_logical_emit_message(true, 'pg_kappa.snapshot', '\\x$forged'::bytea);
SELECT pg_logical_emit_message(true, 'pg_kappa.snapshot', '\\x01'::bytea);});
$node->safe_psql('shop', q{INSERT INTO public.sales VALUES (8, 'ST-1', 'S-1', 'Ana', 'Vigo', 'ES', 2.00, 'EUR', '2026-11-20 11:00+00')});
wait_published($node);
is(join(',', map { $_->{key} } grep { $_->{value} =~ /"connector":"postgres"/ } @{ kcat_consume($broker, 'sales-events') }),
	'7,8', 'the topic has the table\'s rows, not the forged one');
# (two transactions, one message each: one warning each)
is(scalar(() = slurp_file($node->logfile, $log_offset)
	=~ /WARNING:  pg_kappa: ignored a snapshot message not written by kappa.publish_table\(\)/g),
	2, 'each forged message was reported');
# Inside a transaction that publishes a table, a message for that table
# that names another topic, or is not of our format, is ignored too.
$node->safe_psql('shop', q{CREATE TABLE public.refunds (id int PRIMARY KEY, amount numeric)});
my $refunds = $node->safe_psql('shop', q{SELECT 'public.refunds'::regclass::oid});
my $other_topic = unpack('H*', pack('VVVV', 1, $refunds, 2, 21) . '99payment-confirmations{"id":99,"amount":"1"}');
my $bad_format = unpack('H*', pack('VVVV', 9, $refunds, 0, 0));
$log_offset = -s $node->logfile;
$node->safe_psql('shop', qq{BEGIN;
SELECT kappa.publish_table('public.refunds');
SELECT pg_logical_emit_message(true, 'pg_kappa.snapshot', '\\x$other_topic'::bytea);
SELECT pg_logical_emit_message(true, 'pg_kappa.snapshot', '\\x$bad_format'::bytea);
COMMIT;});
$node->safe_psql('shop', q{INSERT INTO public.refunds VALUES (1, 5)});
wait_published($node);
is(join(',', map { $_->{key} } grep { $_->{value} =~ /"table":"refunds"/ } @{ kcat_consume($broker, 'sales-events') }),
	'1', 'the publishing transaction\'s own table: its rows only');
is(scalar(grep { $_->{key} eq '99' } @{ kcat_consume($broker, 'payment-confirmations') }), 0,
	'nothing in the other topic');
# (two messages in one transaction: a warning once per transaction, so that
# a flood of them cannot flood the log)
is(scalar(() = slurp_file($node->logfile, $log_offset) =~ /WARNING:  pg_kappa: ignored a snapshot message/g),
	1, 'reported once for the transaction, and the publisher went on');
$node->safe_psql('shop', q{SELECT kappa.unpublish_table('public.refunds')});
$node->safe_psql('shop', q{SELECT kappa.unpublish_table('public.sales')});

# ---- refused settings keep their secrets out of the log ------------------------
$log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', q{
kappa.kafka_options = 'sasl.username=kappa; sasl.password=TopSecret1'
kappa.soap_url = 'https://kappa:TopSecret2@payments.example/ws'
});
$node->reload;
wait_until(sub { slurp_file($node->logfile, $log_offset) =~ /parameter "kappa.soap_url"/ },
	'the reload refused the new values');
my $log = slurp_file($node->logfile, $log_offset);
like($log, qr/invalid value for parameter "kappa.kafka_options"\n.*DETAIL:  Property "sasl.password" holds a secret/,
	'kappa.kafka_options refused, the property named');
like($log, qr/invalid value for parameter "kappa.soap_url"\n.*DETAIL:  The URL must not contain a user name or password/,
	'kappa.soap_url refused, the reason given');
unlike($log, qr/TopSecret/, 'neither password is in the log');

# A password whose "=" was forgotten is not quoted back as a malformed option.
$log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', q{kappa.kafka_options = 'sasl.username=kappa; sasl.password TopSecret3'});
$node->reload;
wait_until(sub { slurp_file($node->logfile, $log_offset) =~ /parameter "kappa.kafka_options"/ },
	'the reload refused the mistyped option');
$log = slurp_file($node->logfile, $log_offset);
like($log, qr/DETAIL:  Option 2 is not of the form key=value\./, 'the option is named by its place');
unlike($log, qr/TopSecret/, 'its text is not in the log');

# A secrets file line longer than the reader's buffer is refused whole: its
# tail, which holds an "=", is not read as a line of its own and quoted as
# an unknown key.
my $secrets = $node->data_dir . '/kappa_secrets';
open my $fh, '>', $secrets or die $!;
print $fh "# kappa secrets\n", 'kafka.sasl.password = ' . ('p' x 5000) . "TailSecret=3\n";
close $fh;
chmod 0600, $secrets;
$log_offset = -s $node->logfile;
$node->append_conf('postgresql.conf', qq{kappa.secrets_file = '$secrets'});
$node->restart;
wait_until(sub { slurp_file($node->logfile, $log_offset) =~ /line 2 of the secrets file is longer than/ },
	'the workers refuse the long line');
$log = slurp_file($node->logfile, $log_offset);
unlike($log, qr/TailSecret|ppppp/, 'no piece of the secret is in the log');
unlike($log, qr/unknown key/, 'and no piece of it taken for a key');

# The properties pg_kappa owns are refused in the secrets file as they are
# in kappa.kafka_options: log.queue off would have librdkafka's threads call
# the log callback themselves (0.1.5).
open $fh, '>', $secrets or die $!;
print $fh "kafka.log.queue = false\n";
close $fh;
$log_offset = -s $node->logfile;
$node->restart;
wait_until(sub { slurp_file($node->logfile, $log_offset) =~ /property "log.queue" in the secrets file is managed by pg_kappa/ },
	'the workers refuse log.queue from the secrets file');
like(slurp_file($node->logfile, $log_offset), qr/HINT:  Remove the line "kafka.log.queue" from the secrets file/,
	'and say what to do');
# The status that kappa_reader may read says what is wrong without the
# file's path, a superuser's setting; the server log has it (0.1.5).
my $status = wait_until(sub {
	my $e = $node->safe_psql('shop', q{SELECT last_error FROM kappa.stream_worker_status() WHERE last_error IS NOT NULL});
	$e ne '' ? $e : undef;
}, 'the stream worker to report the refusal');
is($status, 'property "log.queue" in the secrets file is managed by pg_kappa', 'the status names no path');
like(slurp_file($node->logfile, $log_offset), qr/DETAIL:  kappa.secrets_file is "\Q$secrets\E"/, 'the log does');

done_testing();
