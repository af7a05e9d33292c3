# kappa.stream_group longer than the stream workers keep (127 bytes): they
# refuse to start and say why, rather than store offsets under a cut name.
# (A check hook would not do: a value it refuses at server start is replaced
# by the default with a WARNING, another group that reads every topic
# again.)
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PgKappa::Test;

my $broker = start_dev_broker(topics => [ 'sales-events:1', 'payment-confirmations:1' ]);
my $group = 'g' x 128;
my $node = kappa_node('group_name', $broker, conf => qq{
kappa.cdc_enabled = off
kappa.stream_group = '$group'
});
wait_until(sub { slurp_file($node->logfile) =~
	  /ERROR:  kappa.stream_group is longer than 127 bytes\n[^\n]*DETAIL:  The stream workers keep their offsets under the group's name, of at most 127 bytes\.\n[^\n]*HINT:  Set a shorter kappa.stream_group and restart the server\./ },
	'the stream worker to refuse the group name');
pass('the stream worker refuses a group name longer than 127 bytes, with the fix');
is($node->safe_psql('shop', 'SELECT count(*) FROM kappa.stream_offsets'), '0', 'and reads nothing');

$node->stop;
$node->append_conf('postgresql.conf', "kappa.stream_group = '" . ('g' x 127) . "'");
$node->start;
wait_until(sub { $node->safe_psql('shop', 'SELECT count(DISTINCT consumer_group) FROM kappa.stream_offsets') eq '1' },
	'the workers to join with 127 bytes');
is($node->safe_psql('shop', 'SELECT DISTINCT consumer_group FROM kappa.stream_offsets'), 'g' x 127,
	'offsets are stored under the group named, whole');

$node->stop;
done_testing();
