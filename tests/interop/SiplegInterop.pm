# Shared pieces of the sipleg interop peers (netsip_uac.pl, netsip_uas.pl).
#
# The peers talk to the Python harness (tests/interop/peers.py) through
# stdout, one line per event, flushed at once:
#   READY leg=PROTO:IP:PORT              (UAS only: listening, registered)
#   RECV {json}                          every SIP packet the peer received
#   RESULT status=ok|fail|timeout k=v... the verdict, printed exactly once
# and through the exit code: 0 ok, 1 failure, 2 bad arguments, 3 timeout.
package SiplegInterop;

use strict;
use warnings;
use Exporter 'import';
use JSON::PP ();
use Net::SIP::Util ();

our @EXPORT_OK = qw(parse_leg uri_host proxy_uri parse_auth result observer);

my $json = JSON::PP->new->canonical;
my $result_printed = 0;

$| = 1;

# "udp:127.0.0.1:5070" or "tcp:[::1]:5070" -> hash for Net::SIP::Leg->new.
# An explicit port is required: Net::SIP turns port 0 into "try 5060 first".
# A TCP leg gets a contact with ";transport=tcp": Net::SIP builds the
# Contact of its INVITEs and 2xx answers from it, and without the parameter
# that Contact would mean UDP (RFC 3263 4.1), so in-dialog requests routed
# by a proxy would look for the peer on UDP.
sub parse_leg {
    my $spec = shift;
    my ($proto, $v6, $v4, $port) =
        $spec =~ m{^(udp|tcp):(?:\[([0-9a-fA-F:.]+)\]|(\d+\.\d+\.\d+\.\d+)):(\d+)$}
        or die "bad leg '$spec', want udp|tcp:IPv4:PORT or udp|tcp:[IPv6]:PORT\n";
    $port or die "leg '$spec' needs an explicit port\n";
    my %leg = (proto => $proto, addr => $v6 // $v4, port => $port);
    $leg{contact} = 'sip:' . uri_host(\%leg) . ":$port;transport=$proto" if $proto ne 'udp';
    return \%leg;
}

# The leg's address as written in a URI (IPv6 in brackets).
sub uri_host {
    my $leg = shift;
    return $leg->{addr} =~ m{:} ? "[$leg->{addr}]" : $leg->{addr};
}

# "tcp:127.0.0.1:5060" -> "sip:127.0.0.1:5060;transport=tcp", the form
# Net::SIP::Simple accepts for outgoing_proxy (a bare "ip:port" means UDP).
sub proxy_uri {
    my $spec = shift;
    my $leg = parse_leg($spec);
    return 'sip:' . uri_host($leg) . ":$leg->{port};transport=$leg->{proto}";
}

# "alice:secret" -> [ 'alice', 'secret' ], the credentials Net::SIP::Simple
# takes as "auth" and answers every 401/407 challenge with (MD5 digest,
# once per realm: a second challenge for the same realm ends the request).
sub parse_auth {
    my $spec = shift;
    my ($user, $password) = $spec =~ m{^([^:]+):(.*)$}s
        or die "bad auth '$spec', want USER:PASSWORD\n";
    return [ $user, $password ];
}

# Print the RESULT line (once) and exit with the matching code.
sub result {
    my ($status, %fields) = @_;
    exit(3) if $result_printed++;
    my $line = join(' ', "RESULT status=$status",
        map { "$_=" . (defined $fields{$_} ? $fields{$_} : '') } sort keys %fields);
    print "$line\n";
    exit($status eq 'ok' ? 0 : $status eq 'timeout' ? 3 : 1);
}

# An object for the front of a Net::SIP::ReceiveChain: it reports every
# packet as a RECV line, counts requests by method and responses by code
# in %$counts (keys "INVITE", "180 INVITE", ...), calls $on_packet->($packet)
# if given, and never consumes the packet (returns false).
sub observer {
    my ($counts, $on_packet) = @_;
    return bless { counts => $counts, on_packet => $on_packet }, 'SiplegInterop::Observer';
}

package SiplegInterop::Observer;

sub receive {
    my ($self, $packet, $leg, $from) = @_;
    my %event = (
        src     => ref($from) ? Net::SIP::Util::ip_parts2string($from) : "$from",
        proto   => ref($from) ? $from->{proto} : $leg->{proto},
        headers => $packet->get_header,
    );
    if ($packet->is_request) {
        @event{qw(method uri)} = ($packet->method, $packet->uri);
        $self->{counts}{$packet->method}++;
    } else {
        @event{qw(code reason cseq)} = ($packet->code + 0, $packet->msg, $packet->cseq);
        $self->{counts}{ $packet->code . ' ' . (split(' ', $packet->cseq))[1] }++;
    }
    print 'RECV ' . $json->encode(\%event) . "\n";
    $self->{on_packet}->($packet) if $self->{on_packet};
    return;
}

1;
