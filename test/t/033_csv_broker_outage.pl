# Kafka goes away while the CSV worker sends a file: deliveries fail (short
# message.timeout.ms), the file stays in the inbox, the failure is shown in
# kappa.stat_sources, and the worker sends the file again with backoff.  When
# the broker is back the file is recorded and moved once every row is
# acknowledged: each row is in the topic (a resent row is an identical copy)
# and counts exactly once in the rankings.  A new version of a file renamed
# over it while its rows wait for Kafka is read as a file of its own, never
# moved to processed/ unread.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;
use Time::HiRes qw(usleep);

my $broker = start_dev_broker(topics => [ 'sales-events:4', 'payment-confirmations:1',
	'top-sales-by-city:1', 'top-salesman-by-country:1' ]);
my $inbox = PostgreSQL::Test::Utils::tempdir();
my $node = kappa_node('csv_outage', $broker, conf => qq{
kappa.csv_inbox = '$inbox'
kappa.csv_poll_interval = 100
kappa.csv_stable_ms = 300
kappa.cdc_enabled = off
kappa.idle_timeout = '1h'
kappa.stream_batch_ms = 50
kappa.kafka_options = 'message.timeout.ms=1500'
});

# 20 000 sales in four cities; the expectation is summed here.
my $rows = 20000;
my (%total, %count);
my $csv = "sale_id,store_id,seller_id,seller_name,city,country,amount,currency,sold_at\r\n";
for my $i (1 .. $rows)
{
	my $city = (qw(Madrid Lisboa Porto Sevilla))[ $i % 4 ];
	my $cents = 100 + ($i * 37) % 9900;
	$csv .= sprintf("%d,ST-1,S-%d,\"Seller, %d\",%s,ES,%d.%02d,EUR,2026-11-20T%02d:%02d:00Z\r\n",
		$i, $i % 7, $i % 7, $city, int($cents / 100), $cents % 100, int($i / 1000) % 24, $i % 60);
	$total{$city} += $cents;
	$count{$city}++;
}
my $expected = join(',', map { sprintf('%s=%d.%02d/%d', $_, int($total{$_} / 100), $total{$_} % 100, $count{$_}) }
	sort keys %total);

$broker->control('down all');
open my $fh, '>:raw', "$inbox/.sales_outage.csv.tmp" or die $!;
print $fh $csv;
close $fh;
rename("$inbox/.sales_outage.csv.tmp", "$inbox/sales_outage.csv") or die $!;

wait_until(sub { $node->safe_psql('shop', q{
SELECT last_error LIKE '%could not be delivered to Kafka%' FROM kappa.stat_sources WHERE source = 'csv'}) eq 't' },
	'the CSV worker to see its deliveries fail');
like($node->safe_psql('shop', q{SELECT last_error FROM kappa.stat_sources WHERE source = 'csv'}),
	qr/^sales_outage\.csv: \d+ rows could not be delivered to Kafka \(.+\); sending the file again$/,
	'kappa.stat_sources says which file failed, how many rows and that it is sent again');
ok(-e "$inbox/sales_outage.csv", 'the file stays in the inbox while Kafka is away');
ok(!-e "$inbox/processed/sales_outage.csv", 'and is not in processed/');
is($node->safe_psql('shop', q{SELECT state FROM kappa.csv_files WHERE name = 'sales_outage.csv'}),
	'processing', 'the ledger has it as processing');
sleep 3;    # more failed attempts, with backoff

$broker->control('up all');
wait_until(sub { -e "$inbox/processed/sales_outage.csv" && !-e "$inbox/sales_outage.csv" },
	'the file to be processed once Kafka is back');
is($node->safe_psql('shop', q{
SELECT state || '|' || rows_ingested || '|' || rows_rejected || '|' || moved_to
  FROM kappa.csv_files WHERE name = 'sales_outage.csv'}),
	"processed|$rows|0|processed/sales_outage.csv", 'recorded once, with every row');

# The topic, read with kcat: every row at least once, copies identical.
my (%seen, $copies, $mismatched);
for my $m (@{ kcat_consume($broker, 'sales-events') })
{
	next unless $m->{value} =~ /"connector":"csv"/;
	my ($line) = $m->{value} =~ /"line":(\d+)/;
	if (exists $seen{ $m->{key} })
	{
		$copies++;
		$mismatched++ if $seen{ $m->{key} } ne $m->{value};
	}
	$seen{ $m->{key} } = $m->{value};
}
is(scalar(keys %seen), $rows, 'every row of the file is in the topic');
is(join(',', grep { !exists $seen{$_} } 1 .. $rows), '', 'no sale id is missing');
is($mismatched // 0, 0, 'a row sent again is an identical copy (' . ($copies // 0) . ' copies)');

# Exactly once in the rankings.
wait_until(sub { $node->safe_psql('shop', q{
SELECT coalesce(sum(sale_count), 0) FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city'}) eq $rows },
	'the stream worker to apply the file');
sleep 1;
is($node->safe_psql('shop', q{
SELECT string_agg(group_values[1] || '=' || total || '/' || sale_count, ',' ORDER BY group_values[1])
  FROM kappa.ranking_results WHERE ranking = 'top_sales_by_city'}),
	$expected, 'each sale counts exactly once in top_sales_by_city');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.dead_letters}), '0', 'no dead letters');

# ---- a new version put in place of a file whose rows wait for Kafka ---------
# The store writes a corrected file aside and renames it over the first
# while the worker still waits for Kafka to acknowledge the first's rows.
# The first is recorded (its rows were read and sent) but not moved, since
# its name is now the new file's; the new file is read as a file of its own.
my $header = "sale_id,store_id,seller_id,seller_name,city,country,amount,currency,sold_at\n";
my $v1 = $header . join('', map { "$_,ST-1,S-1,Ana,Bilbao,ES,1.00,EUR,2026-11-20T10:00:00Z\n" } 30001 .. 30003);
my $v2 = $header . join('', map { "$_,ST-1,S-1,Ana,Bilbao,ES,2.00,EUR,2026-11-20T10:00:00Z\n" } 30101 .. 30102);
my $put = sub {
	my ($content) = @_;
	open my $out, '>:raw', "$inbox/.sales_swap.csv.tmp" or die $!;
	print $out $content;
	close $out;
	rename("$inbox/.sales_swap.csv.tmp", "$inbox/sales_swap.csv") or die $!;
};
$broker->control('down all');
$put->($v1);
wait_until(sub { $node->safe_psql('shop', q{
SELECT last_error LIKE 'sales_swap.csv: % could not be delivered to Kafka%' FROM kappa.stat_sources WHERE source = 'csv'}) eq 't' },
	'the first version\'s deliveries to fail');
$put->($v2);
$broker->control('up all');
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM kappa.csv_files WHERE name = 'sales_swap.csv' AND state = 'processed'}) eq '2' },
	'both versions to be processed');
wait_until(sub { !-e "$inbox/sales_swap.csv" }, 'the inbox to be empty');
is(slurp_file("$inbox/processed/sales_swap.csv"), $v2, 'processed/ has the new version');
ok(!-e "$inbox/processed/sales_swap.csv.1", 'and nothing else of that name');
is($node->safe_psql('shop', q{
SELECT string_agg(rows_ingested || '|' || coalesce(moved_to, '-') || '|' || coalesce(error, '-'), ', ' ORDER BY id)
  FROM kappa.csv_files WHERE name = 'sales_swap.csv'}),
	'3|-|replaced in the inbox by another file of the same name before it was moved, 2|processed/sales_swap.csv|-',
	'the ledger: the first version read and sent but never moved, the second moved');
my %swap = map { $_->{key} => 1 } grep { $_->{value} =~ /"file":"sales_swap.csv"/ } @{ kcat_consume($broker, 'sales-events') };
is(join(',', sort keys %swap), '30001,30002,30003,30101,30102', 'the rows of both versions are in the topic');

# A file the store deletes while its rows wait for Kafka: its rows are
# acknowledged and recorded, and the ledger says it was deleted, not
# "replaced by another file" (0.1.5).
my $errors_before = $node->safe_psql('shop', q{SELECT errors FROM kappa.stat_sources WHERE source = 'csv'});
$broker->control('down all');
$put->($header . "40101,ST-1,S-1,Ana,Bilbao,ES,5.00,EUR,2026-11-20T10:00:00Z\n");
wait_until(sub { $node->safe_psql('shop', qq{
SELECT errors > $errors_before AND last_error LIKE 'sales_swap.csv: % could not be delivered to Kafka%'
       AND EXISTS (SELECT FROM kappa.csv_files WHERE name = 'sales_swap.csv' AND state = 'processing')
  FROM kappa.stat_sources WHERE source = 'csv'}) eq 't' },
	'the deleted file\'s deliveries to fail');
unlink("$inbox/sales_swap.csv") or die $!;
$broker->control('up all');
wait_until(sub { $node->safe_psql('shop', q{
SELECT count(*) FROM kappa.csv_files WHERE name = 'sales_swap.csv' AND error LIKE '%deleted from the inbox before it was moved%'}) eq '1' },
	'the deleted file to be recorded');
is($node->safe_psql('shop', q{SELECT state || '|' || rows_ingested || '|' || coalesce(moved_to, '-') FROM kappa.csv_files
 WHERE name = 'sales_swap.csv' AND error LIKE '%deleted from the inbox%'}), 'processed|1|-',
	'its row sent and recorded, nothing moved');
ok((grep { $_->{key} eq '40101' } @{ kcat_consume($broker, 'sales-events') }), 'its row is in the topic');

# The broker refuses a file's rows for what they are (here the next produce
# requests are answered "message too large", as a topic whose
# max.message.bytes is below the rows would answer): sending the file again
# cannot help, so each resend counts as an attempt, and after 5 the file
# goes to failed/ with the reason while the inbox goes on (0.1.5; before,
# it was sent again forever and no other file was read).
$broker->control('produce-errors 10 100000');
$put->($header . "40001,ST-1,S-1,Ana,Bilbao,ES,2.00,EUR,2026-11-20T10:00:00Z\n");
wait_until(sub { -e "$inbox/failed/sales_swap.csv" }, 'the refused file to be given up');
is(slurp_file("$inbox/failed/sales_swap.csv.reason"),
	"Kafka refused rows of the file in 5 attempts: 1 rows the last time (Broker: Message size too large); "
	  . "a row larger than the topic's max.message.bytes is refused so\n",
	'failed/ says why');
is($node->safe_psql('shop', q{SELECT state || '|' || attempts FROM kappa.csv_files
 WHERE name = 'sales_swap.csv' AND moved_to = 'failed/sales_swap.csv'}), 'failed|6',
	'the ledger: failed, after five sends');
$broker->control('clear-produce-errors');
$put->($header . "40002,ST-1,S-1,Ana,Bilbao,ES,3.00,EUR,2026-11-20T10:00:00Z\n");
wait_until(sub { -e "$inbox/processed/sales_swap.csv.1" }, 'the next file to be processed');

# Settings that cannot make a Kafka producer (a secrets file others may
# read) fail the worker before the ledger counts an attempt of a file: not
# the file's fault (0.1.5; before, each restart counted one, and after five
# every file went to failed/ unread).
my $secrets = PostgreSQL::Test::Utils::tempdir() . '/kappa.secrets';
open my $sf, '>', $secrets or die $!;
print $sf "# no secrets\n";
close $sf;
chmod 0644, $secrets or die $!;
my $offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "kappa.secrets_file = '$secrets'");
$node->reload;
$put->($header . "40003,ST-1,S-1,Ana,Bilbao,ES,4.00,EUR,2026-11-20T10:00:00Z\n");
# (once the file is stable, each exit of the CSV worker is a try of it,
# which before counted an attempt)
sleep 1;
$offset = -s $node->logfile;
wait_until(sub { (() = slurp_file($node->logfile, $offset) =~ /background worker "pg_kappa csv inbox" \(PID \d+\) exited with exit code 1/g) >= 3 },
	'the CSV worker to fail on the secrets file three times');
like(slurp_file($node->logfile, $offset), qr/ERROR:  the secrets file has group or world access.*\n.*DETAIL:  kappa.secrets_file is "[^"]+"/,
	'because of the secrets file');
is($node->safe_psql('shop', q{SELECT count(*) FROM kappa.csv_files WHERE name = 'sales_swap.csv' AND state = 'processing'}),
	'0', 'no attempt of the file was counted');
ok(-e "$inbox/sales_swap.csv", 'the file waits in the inbox');
chmod 0600, $secrets or die $!;
wait_until(sub { -e "$inbox/processed/sales_swap.csv.2" }, 'the file processed once the secrets file is private');
is($node->safe_psql('shop', q{SELECT attempts FROM kappa.csv_files WHERE moved_to = 'processed/sales_swap.csv.2'}),
	'1', 'in one attempt');

# ---- a ready file written again in place while Kafka holds up the worker ----
# Four files wait for Kafka, and the worker, which keeps four in flight,
# waits for them before it starts the fifth, found stable before the outage
# went on.  Meanwhile the store truncates the fifth and writes it again, row
# by row.  The worker must see that it is no longer the file it found
# stable, and read it only once it is stable again: whole.  (Before, it read
# what the file held when its turn came, and recorded it as processed.)
$node->append_conf('postgresql.conf', "kappa.csv_stable_ms = 2000");
$node->reload;
$broker->control('down all');
my @waiting = map { "sales_wait_$_.csv" } 1 .. 4;
my $late = 'sales_wait_5.csv';
my $id = 50000;
for my $name (@waiting, $late)
{
	open my $out, '>:raw', "$inbox/.$name.tmp" or die $!;
	print $out $header . join('', map { ++$id . ",ST-1,S-1,Ana,Soria,ES,1.00,EUR,2026-11-20T10:00:00Z\n" } 1 .. 2);
	close $out;
	rename("$inbox/.$name.tmp", "$inbox/$name") or die $!;
}
wait_until(sub { $node->safe_psql('shop', q{SELECT count(*) FROM kappa.csv_files WHERE name LIKE 'sales_wait_%' AND state = 'processing'}) eq '4' },
	'the worker to send the first four files');
wait_until(sub { $node->safe_psql('shop', q{SELECT state FROM kappa.stat_sources WHERE source = 'csv'}) =~ /again in/ },
	'their deliveries to fail');
is($node->safe_psql('shop', qq{SELECT count(*) FROM kappa.csv_files WHERE name = '$late'}), '0', 'the fifth is not started');
# the store writes the fifth again, in place: 40 rows, one every 100 ms
open my $rewrite, '>:raw', "$inbox/$late" or die $!;
$rewrite->autoflush(1);
print $rewrite $header;
$broker->control('up all');
my $rewritten = 0;
for my $i (1 .. 40)
{
	print $rewrite ++$id . ",ST-1,S-1,Ana,Teruel,ES,1.00,EUR,2026-11-20T10:00:00Z\n";
	$rewritten++;
	usleep(100_000);
}
close $rewrite;
wait_until(sub { $node->safe_psql('shop', q{SELECT count(*) FROM kappa.csv_files WHERE name LIKE 'sales_wait_%' AND state = 'processed'}) eq '5' },
	'all five files processed');
is($node->safe_psql('shop', qq{SELECT rows_ingested || ' ' || attempts FROM kappa.csv_files WHERE name = '$late'}),
	"$rewritten 1", 'the fifth read whole, once it was stable again');

# ---- stops of the worker are not attempts of the file it holds -------------
# Kafka holds a file up, and the worker is stopped six times meanwhile (a
# server restart, pg_terminate_backend): none of it is the file's doing, so
# no stop counts an attempt (0.1.5; before, each resumed run counted one,
# and after five the good file went to failed/ unread).
my $drop = sub {
	my ($name, @ids) = @_;
	open my $out, '>:raw', "$inbox/.$name.tmp" or die $!;
	print $out $header . join('', map { "$_,ST-1,S-1,Ana,Huesca,ES,1.00,EUR,2026-11-20T10:00:00Z\n" } @ids);
	close $out;
	rename("$inbox/.$name.tmp", "$inbox/$name") or die $!;
};
$node->append_conf('postgresql.conf', "kappa.csv_stable_ms = 300");
$node->reload;
$broker->control('down all');
$drop->('sales_stopped.csv', 60001 .. 60003);
# (state and start of the file's attempt: a resume changes the start)
my $started_sql = q{SELECT coalesce(max(state || ' ' || started_at), '') FROM kappa.csv_files WHERE name = 'sales_stopped.csv'};
wait_until(sub { $node->safe_psql('shop', $started_sql) ne '' }, 'the worker to start the file');
for my $stop (1 .. 6)
{
	my $started = $node->safe_psql('shop', $started_sql);
	last unless $started =~ /^processing /;    # (given up: the test fails below)
	$node->safe_psql('shop', q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'pg_kappa csv inbox'});
	wait_until(sub { my $now = $node->safe_psql('shop', $started_sql); $now ne '' && $now ne $started },
		"the worker to resume the file after stop $stop");
}
is($node->safe_psql('shop', q{SELECT state || ' ' || attempts FROM kappa.csv_files WHERE name = 'sales_stopped.csv'}),
	'processing 1', 'six stops counted no attempt');
$broker->control('up all');
wait_until(sub { -e "$inbox/processed/sales_stopped.csv" }, 'the stopped file processed once Kafka is back');
is($node->safe_psql('shop', q{SELECT state || ' ' || rows_ingested || ' ' || attempts FROM kappa.csv_files WHERE name = 'sales_stopped.csv'}),
	'processed 3 1', 'processed, in its one attempt');

# ---- an error counts an attempt of the file it came from, and of no other ----
# Recording one file fails (a trigger refuses it) while another waits behind
# it: the first goes to failed/ after five attempts; the other's resumed
# runs are not attempts of it.
$node->safe_psql('shop', q{
CREATE FUNCTION public.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.name = 'sales_a_poison.csv' AND NEW.state = 'processed' THEN
    RAISE EXCEPTION 'this file may not be recorded';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE UPDATE ON kappa.csv_files
  FOR EACH ROW EXECUTE FUNCTION public.refuse_poison();
});
$broker->control('down all');
$drop->('sales_a_poison.csv', 60101 .. 60102);
$drop->('sales_b_waiting.csv', 60201 .. 60202);
wait_until(sub { $node->safe_psql('shop', q{SELECT count(*) FROM kappa.csv_files WHERE name IN ('sales_a_poison.csv', 'sales_b_waiting.csv') AND state = 'processing'}) eq '2' },
	'the worker to start both files');
$broker->control('up all');
wait_until(sub { -e "$inbox/failed/sales_a_poison.csv" && !-e "$inbox/sales_b_waiting.csv" },
	'the refused file to fail and the other to leave the inbox');
is($node->safe_psql('shop', q{SELECT attempts || ' ' || error FROM kappa.csv_files WHERE name = 'sales_a_poison.csv'}),
	'6 gave up after 5 attempts; the last error was: this file may not be recorded',
	'the file whose recording failed five times is given up, with the reason');
is($node->safe_psql('shop', q{SELECT state || ' ' || attempts FROM kappa.csv_files WHERE name = 'sales_b_waiting.csv'}),
	'processed 1', 'the file waiting behind it counted no attempt of its failures');
$node->safe_psql('shop', 'DROP TRIGGER refuse_poison ON kappa.csv_files; DROP FUNCTION public.refuse_poison()');

done_testing();
