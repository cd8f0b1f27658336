#!/usr/bin/perl
# sipleg interop peer: a Net::SIP::Simple UAS that takes exactly one call.
#
#   netsip_uas.pl --leg udp|tcp:IP:PORT [--mode answer|ring|reject]
#                 [--code 486] [--timeout 15]
#                 [--register sip:uas@DOMAIN --proxy udp|tcp:IP:PORT
#                  [--registrar sip:DOMAIN] [--contact URI] [--expires 300]
#                  [--auth USER:PASSWORD]]
#
# Modes (what the call must look like for status=ok):
#   answer  100, 200 to the INVITE; needs the ACK, then a BYE (200 Closing)
#   ring    100, 180 and no final answer; needs a CANCEL (200 Closing and
#           487 to the INVITE, done by Net::SIP) and the ACK for the 487
#   reject  100, then --code (default 486); needs the ACK for it
# With --register the UAS first registers the AOR through --proxy (REGISTER
# sip:DOMAIN, To/From the AOR, Contact --contact or Net::SIP's default) and
# fails unless the registrar answers 2xx; with --auth, Net::SIP answers a
# 401 challenge with those credentials.
# Prints READY once listening, RECV per packet, one RESULT; see
# SiplegInterop.pm for the line formats and exit codes.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;
use Getopt::Long;
use Net::SIP;
use SiplegInterop qw(parse_leg proxy_uri parse_auth result observer);

my %opt = (mode => 'answer', code => 486, timeout => 15, expires => 300);
GetOptions(\%opt, 'leg=s', 'mode=s', 'code=i', 'timeout=i', 'register=s',
    'proxy=s', 'registrar=s', 'contact=s', 'expires=i', 'auth=s')
    or exit 2;
$opt{leg} or do { warn "--leg is required\n"; exit 2 };
$opt{mode} =~ m{^(answer|ring|reject)$} or do { warn "bad --mode\n"; exit 2 };
!$opt{register} || $opt{proxy} or do { warn "--register needs --proxy\n"; exit 2 };

my %counts;
my $registered = 'none';
sub report {
    my $status = shift;
    result($status, mode => $opt{mode}, register => $registered,
        map { lc($_) => $counts{$_} || 0 } qw(INVITE ACK BYE CANCEL));
}
$SIG{ALRM} = sub { report('timeout') };
alarm($opt{timeout});

my $ua = Net::SIP::Simple->new(
    leg => parse_leg($opt{leg}),
    $opt{register} ? (from => $opt{register}, outgoing_proxy => proxy_uri($opt{proxy})) : (),
    $opt{auth} ? (auth => parse_auth($opt{auth})) : (),
);

my %listen;
if ($opt{mode} eq 'ring') {
    $listen{cb_invite} = sub { my ($call, $req) = @_; $req->create_response(180, 'Ringing') };
} elsif ($opt{mode} eq 'reject') {
    $listen{cb_invite} = sub { my ($call, $req) = @_; $req->create_response($opt{code}) };
}
# The call is over once the request that closes it in this mode arrived.
my $closing = $opt{mode} eq 'answer' ? 'BYE' : 'ACK';
my $over = 0;
$ua->create_chain([
    observer(\%counts, sub { $over = 1 if $_[0]->is_request && $_[0]->method eq $closing }),
    $ua->listen(%listen),
]);

if ($opt{register}) {
    my ($domain) = $opt{register} =~ m{\@([^;>]+)} or do { warn "bad --register\n"; exit 2 };
    my $expires = $ua->register(
        registrar => $opt{registrar} || "sip:$domain",
        expires   => $opt{expires},
        $opt{contact} ? (contact => $opt{contact}) : (),
    );
    $registered = defined $expires ? 'ok' : 'fail';
    report('fail') if !defined $expires;
}

print "READY leg=$opt{leg}\n";
$ua->loop(\$over);
# Let the last response (the 200 to the BYE) leave the socket.
$ua->loop(0.2);

my $ok = $counts{INVITE} && $counts{ACK}
    && ($opt{mode} eq 'answer' ? $counts{BYE} : $opt{mode} eq 'ring' ? $counts{CANCEL} : 1);
report($ok ? 'ok' : 'fail');
