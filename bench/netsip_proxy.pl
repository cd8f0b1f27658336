#!/usr/bin/perl
# Load-test subject: Perl Net::SIP's stateless proxy on loopback.
#
#   netsip_proxy.pl --addr 127.0.0.1 --port PORT [--proto udp,tcp]
#
# One leg per transport, all on ADDR:PORT, one Net::SIP::Dispatcher over
# Net::SIP's own select() event loop, and a Net::SIP::StatelessProxy as the
# dispatcher's receiver: requests go where their Route set or Request-URI
# points, responses where their next Via points.  The proxy adds Via and
# Record-Route to requests; it rewrites Contact only when a packet leaves
# by another leg than it came in on, which bench/load.py never asks for
# (UDP in -> UDP out, TCP in -> TCP out).
#
# Prints "READY" once every leg listens; runs until SIGTERM/SIGINT.
use strict;
use warnings;
use Getopt::Long;
use Net::SIP::Leg;
use Net::SIP::Dispatcher;
use Net::SIP::Dispatcher::Eventloop;
use Net::SIP::StatelessProxy;

my %opt = (addr => '127.0.0.1', proto => 'udp,tcp');
GetOptions(\%opt, 'addr=s', 'port=i', 'proto=s') or exit 2;
$opt{port} or do { warn "--port is required\n"; exit 2 };

my @legs = map {
    Net::SIP::Leg->new(addr => $opt{addr}, port => $opt{port}, proto => $_)
        or die "cannot listen on $_:$opt{addr}:$opt{port}: $!\n"
} split /,/, $opt{proto};

my $loop = Net::SIP::Dispatcher::Eventloop->new;
# A stateless proxy never retransmits: the end points do.
my $dispatcher = Net::SIP::Dispatcher->new(\@legs, $loop, do_retransmits => 0);
my $proxy = Net::SIP::StatelessProxy->new(dispatcher => $dispatcher);
$dispatcher->set_receiver($proxy);

my $stop = 0;
$SIG{TERM} = $SIG{INT} = sub { $stop = 1 };
$| = 1;
print "READY\n";
$loop->loop(undef, \$stop);
