#!/usr/bin/perl
# The shop, for test/demo: sales typed at the tills, CSV files from the
# stores, payment confirmations from the payment service.
#
#   demo_shop.pl INBOX LEDGER
#
# Prints INSERT statements for the sales table on stdout (test/demo pipes
# them into psql), drops a CSV file into INBOX every 10 seconds (written
# under a dot-name, then renamed into place), and appends the payment
# service's confirmations to LEDGER (JSON lines served by
# test/soap_server.py's /ledger) a few seconds after each sale.  Runs until
# it is killed.
use strict;
use warnings;
use utf8;

use POSIX qw(strftime floor);
use Time::HiRes qw(time sleep);

my ($inbox, $ledger) = @ARGV;
die "usage: demo_shop.pl INBOX LEDGER\n" unless $inbox && $ledger;
binmode(STDOUT, ':encoding(UTF-8)');
$| = 1;

my @cities = (
	[ 'Madrid', 'ES' ], [ 'Barcelona', 'ES' ], [ 'Sevilla', 'ES' ], [ 'Valencia', 'ES' ],
	[ 'Lisboa', 'PT' ], [ 'Porto', 'PT' ], [ 'Paris', 'FR' ], [ 'Lyon', 'FR' ],
	[ 'Milano', 'IT' ], [ 'Roma', 'IT' ]);
my @names = ('Ana Ruiz', 'Jordi Puig', 'Lucía Gómez', 'Pablo Soto', 'João Sá', 'Inês Cruz',
	'Claire Martin', 'Hugo Bernard', 'Giulia Rossi', 'Marco Bianchi', 'Eva Gil', 'Luca Conti');
# each seller works in the stores of one country
my %sellers_of;
for my $i (0 .. $#names)
{
	my $country = (qw(ES ES ES ES PT PT FR FR IT IT ES IT))[$i];
	push @{ $sellers_of{$country} }, [ sprintf('S-%02d', $i + 1), $names[$i] ];
}

my $next_sale = 1;            # sales typed at the tills
my $next_csv_sale = 5_000_000;    # sales in the stores' files
my $next_payment = 1;
my @due;                      # [time, confirmation] not yet known to the service
srand(42);

sub iso
{
	my ($t) = @_;
	return strftime('%Y-%m-%dT%H:%M:%S', gmtime($t)) . sprintf('.%03dZ', ($t - floor($t)) * 1000);
}

sub random_sale
{
	my ($id) = @_;
	my ($city, $country) = @{ $cities[ int(rand(@cities)) ] };
	my ($seller, $name) = @{ $sellers_of{$country}[ int(rand(@{ $sellers_of{$country} })) ] };
	my $amount = sprintf('%.2f', 5 + rand(495));
	return { id => $id, store => uc(substr($city, 0, 3)) . '-0' . (1 + int(rand(3))),
		seller => $seller, name => $name, city => $city, country => $country, amount => $amount };
}

# The payment service confirms most sales a few seconds later, declines
# some, and refunds a few confirmed ones later still.
sub schedule_payment
{
	my ($sale, $now) = @_;
	my $r = rand();
	return if $r < 0.05;    # never confirmed: stays PENDING
	my $at = $now + 1 + rand(6);
	my $status = $r < 0.15 ? 'DECLINED' : 'CONFIRMED';
	my $pay = sprintf('PAY-%07d', $next_payment++);
	push @due, [ $at, { payment_id => $pay, sale_id => "$sale->{id}", status => $status,
		amount => $sale->{amount}, currency => 'EUR' } ];
	if ($status eq 'CONFIRMED' && rand() < 0.05)
	{
		push @due, [ $at + 20, { payment_id => $pay, sale_id => "$sale->{id}", status => 'REFUNDED',
			amount => "-$sale->{amount}", currency => 'EUR' } ];
	}
	return;
}

sub publish_due
{
	my ($now) = @_;
	my @ready = grep { $_->[0] <= $now } @due;
	@due = grep { $_->[0] > $now } @due;
	return unless @ready;
	open my $fh, '>>', $ledger or die "cannot append to $ledger: $!";
	for my $d (sort { $a->[0] <=> $b->[0] } @ready)
	{
		my $e = $d->[1];
		printf $fh '{"payment_id":"%s","sale_id":"%s","status":"%s","amount":"%s","currency":"%s","confirmed_at":"%s"}' . "\n",
			$e->{payment_id}, $e->{sale_id}, $e->{status}, $e->{amount}, $e->{currency}, iso($d->[0]);
	}
	close $fh;
	return;
}

sub csv_quote
{
	my ($v) = @_;
	return $v =~ /[",\n]/ ? '"' . ($v =~ s/"/""/gr) . '"' : $v;
}

my $files = 0;
sub drop_csv_file
{
	my ($now) = @_;
	my $name = 'sales_' . strftime('%Y%m%d%H%M%S', gmtime($now)) . '.csv';
	my $tmp = "$inbox/.$name.tmp";
	open my $fh, '>:encoding(UTF-8)', $tmp or die "cannot write $tmp: $!";
	print $fh "sale_id,store_id,seller_id,seller_name,city,country,amount,currency,sold_at\r\n";
	my $rows = 40 + int(rand(20));
	for my $i (1 .. $rows)
	{
		my $s = random_sale($next_csv_sale++);
		my $amount = ($files % 3 == 2 && $i == 7) ? 'n/a' : $s->{amount};   # now and then a bad row
		print $fh join(',', $s->{id}, $s->{store}, $s->{seller}, csv_quote($s->{name}), $s->{city},
			$s->{country}, $amount, 'EUR', iso($now - rand(9))) . "\r\n";
		schedule_payment($s, $now) if $amount ne 'n/a';
	}
	close $fh;
	rename $tmp, "$inbox/$name" or die "cannot rename $tmp: $!";
	$files++;
	return;
}

my $next_file = time() + 3;
while (1)
{
	my $now = time();
	my @values;
	for (1 .. 2 + int(rand(5)))
	{
		my $s = random_sale($next_sale++);
		push @values, sprintf("(%d, '%s', '%s', '%s', '%s', '%s', %s, 'EUR', now())",
			$s->{id}, $s->{store}, $s->{seller}, $s->{name} =~ s/'/''/gr, $s->{city}, $s->{country}, $s->{amount});
		schedule_payment($s, $now);
	}
	print 'INSERT INTO sales VALUES ' . join(', ', @values) . ";\n";
	if ($now >= $next_file)
	{
		drop_csv_file($now);
		$next_file += 10;
	}
	publish_due($now);
	sleep(2);
}
