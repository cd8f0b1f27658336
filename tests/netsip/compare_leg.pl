#!/usr/bin/perl
# sipleg comparison probe: run packets through Perl Net::SIP::Leg's
# forward_incoming (and forward_outgoing) and report what it did to them.
#
# Input (stdin, one JSON object):
#   { "leg":     {"addr": "127.0.0.1", "port": 5070, "proto": "udp",
#                 "host": "optional name for Via/Contact"},
#     "out_leg": {... same keys ...}            (optional)
#     "packets": ["INVITE sip:... SIP/2.0\r\n...", ...] }
# The legs bind their ports (Net::SIP always opens a socket), so the caller
# must hand in free, explicit ports: Net::SIP reads port 0 as "5060 first".
#
# Output (stdout, one JSON object):
#   { "contacts": {"in": CONTACT, "out": CONTACT|null},
#     "results": [ one object per packet, in input order ] }
# where a result is
#   { "error": TEXT }                       the packet did not parse, or
#   { "kind": "request"|"response", "refused": BOOL,
#     "code": N|null, "reason": TEXT|null,  forward_* return value
#     "uri": R-URI (requests), "route": [...], "record_route": [...],
#     "max_forwards": TEXT|null, "vias": N,
#     "branch": via_branch(packet, 3) of the sending leg (requests) }
# The packet is examined after forward_incoming on "leg" and, when that
# succeeded and "out_leg" is given, forward_outgoing on "out_leg".
# Exit codes: 0 done, 2 bad input, 3 own timeout.
use strict;
use warnings;
use JSON::PP ();
use Net::SIP::Leg;
use Net::SIP::Packet;

$SIG{ALRM} = sub { print STDERR "compare_leg.pl: timeout\n"; exit 3 };
alarm 10;

my $json = JSON::PP->new->utf8->canonical;
my $input = eval { local $/; $json->decode(scalar <STDIN>) };
if (!$input || ref $input->{leg} ne 'HASH' || ref $input->{packets} ne 'ARRAY') {
    print STDERR "compare_leg.pl: want {leg: {...}, packets: [...]} on stdin\n";
    exit 2;
}

sub make_leg {
    my $spec = shift;
    return Net::SIP::Leg->new(
        addr  => $spec->{addr},
        port  => $spec->{port},
        proto => $spec->{proto} || 'udp',
        $spec->{host} ? (host => $spec->{host}) : (),
    );
}

my $in = make_leg($input->{leg});
my $out = $input->{out_leg} ? make_leg($input->{out_leg}) : undef;

# JSON text, not a number, for a header value Net::SIP computed with.
sub text { my $value = shift; return defined $value ? "$value" : undef }

sub describe {
    my ($packet, $refused) = @_;
    my %found = (
        kind         => $packet->is_request ? 'request' : 'response',
        refused      => $refused ? JSON::PP::true : JSON::PP::false,
        code         => $refused ? $refused->[0] : undef,
        reason       => $refused ? $refused->[1] : undef,
        route        => [ $packet->get_header('route') ],
        record_route => [ $packet->get_header('record-route') ],
        max_forwards => text(scalar $packet->get_header('max-forwards')),
        vias         => scalar(my @via = $packet->get_header('via')),
    );
    if ($packet->is_request) {
        $found{uri} = $packet->uri;
        $found{branch} = ($out || $in)->via_branch($packet, 3);
    }
    return \%found;
}

my @results;
for my $text (@{ $input->{packets} }) {
    my $packet = eval { Net::SIP::Packet->new($text) };
    if (!$packet) {
        push @results, { error => "parse: " . ($@ || 'unknown') };
        next;
    }
    my $refused = $in->forward_incoming($packet);
    $refused = $out->forward_outgoing($packet, $in) if !$refused && $out;
    push @results, describe($packet, $refused);
}

print $json->encode({
    contacts => { in => $in->{contact}, out => $out ? $out->{contact} : undef },
    results  => \@results,
}), "\n";
exit 0;
