#!/usr/bin/perl
# sipleg interop peer: a Net::SIP::Simple UAC that places exactly one call
# (or makes one registration).
#
#   netsip_uac.pl --leg udp|tcp:IP:PORT --proxy udp|tcp:IP:PORT --to URI
#   (IP: IPv4, or IPv6 in brackets)
#                 [--mode call|cancel|rejected|register] [--code 486]
#                 [--from URI] [--auth USER:PASSWORD]
#                 [--timeout 15]
#
# Every request (INVITE, ACK, CANCEL, BYE, REGISTER) goes to the outgoing
# proxy --proxy; the Request-URI is --to.  With --auth, Net::SIP answers a
# 401/407 challenge with those credentials (once per realm).  Modes (what
# makes status=ok):
#   call      INVITE answered 2xx (Net::SIP sends the ACK), then BYE
#             answered 2xx
#   cancel    INVITE, CANCEL as soon as a 180 arrives, CANCEL answered 2xx
#             and the INVITE answered 487
#   rejected  INVITE answered with exactly --code (Net::SIP sends the ACK)
#   register  REGISTER of --to (the address of record, in To and From, with
#             Net::SIP's default Contact) at sip:DOMAIN of --to, finally
#             answered with exactly --code
# Prints RECV per packet and one RESULT line (invite=, cancel=, bye=,
# register= hold the final response codes seen, error= the errno of a
# failed delivery);
# see SiplegInterop.pm for the formats and exit codes.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;
use Getopt::Long;
use Net::SIP;
use SiplegInterop qw(parse_leg uri_host proxy_uri parse_auth result observer);

my %opt = (mode => 'call', code => 486, timeout => 15);
GetOptions(\%opt, 'leg=s', 'proxy=s', 'to=s', 'from=s', 'mode=s', 'code=i', 'timeout=i',
    'auth=s')
    or exit 2;
$opt{$_} or do { warn "--$_ is required\n"; exit 2 } for qw(leg proxy to);
$opt{mode} =~ m{^(call|cancel|rejected|register)$} or do { warn "bad --mode\n"; exit 2 };

my %counts;
my %final = (invite => '', cancel => '', bye => '', register => '');
my $error = '';
sub report {
    my $status = shift;
    result($status, mode => $opt{mode}, error => $error, %final);
}
$SIG{ALRM} = sub { report('timeout') };
alarm($opt{timeout});

my $leg = parse_leg($opt{leg});
my $ua = Net::SIP::Simple->new(
    leg            => $leg,
    from           => $opt{from} || 'sip:uac@' . uri_host($leg),
    outgoing_proxy => proxy_uri($opt{proxy}),
    $opt{auth} ? (auth => parse_auth($opt{auth})) : (),
);
# Final response codes of our requests, as the observer sees them.
$ua->create_chain([
    observer(\%counts, sub {
        my $packet = shift;
        return if $packet->is_request || $packet->code < 200;
        my $method = lc((split(' ', $packet->cseq))[1]);
        $final{$method} = $packet->code if exists $final{$method};
    }),
    $ua->{endpoint},
]);

if ($opt{mode} eq 'register') {
    my ($domain) = $opt{to} =~ m{\@([^;>]+)} or do { warn "bad --to\n"; exit 2 };
    # Waits for the final response (after the challenge, if any).
    $ua->register(registrar => "sip:$domain", from => $opt{to});
    report($final{register} eq $opt{code} ? 'ok' : 'fail');
}

my ($invite_done, $cancel_sent, $close_done) = (0, 0, 0);
my $call;
$call = $ua->invite($opt{to},
    cb_final => sub {
        my ($status, $c, %info) = @_;
        # A transport error (no response at all) carries an errno.
        $error = 0 + $info{errno} if $info{errno} && !$info{code};
        $invite_done = 1;
    },
    cb_preliminary => sub {
        my ($c, $code) = @_;
        return if $opt{mode} ne 'cancel' || $code != 180 || $cancel_sent++;
        $call->cancel(cb_final => sub { $close_done = 1 });
    },
);
$ua->loop(\$invite_done);

my $ok;
if ($opt{mode} eq 'call') {
    if ($final{invite} =~ m{^2}) {
        $call->bye(cb_final => sub { $close_done = 1 });
        $ua->loop(\$close_done);
    }
    $ok = $final{invite} =~ m{^2} && $final{bye} =~ m{^2};
} elsif ($opt{mode} eq 'cancel') {
    $ua->loop(\$close_done) if $cancel_sent;
    $ok = $final{invite} eq '487' && $final{cancel} =~ m{^2};
} else {
    $ok = $final{invite} eq $opt{code};
}
# Let the last ACK leave the socket (stream writes go through the loop).
$ua->loop(0.2);
report($ok ? 'ok' : 'fail');
