package PAGI::Server::ProxyHeaders;
use strict;
use warnings;

our $VERSION = '0.01';

use Socket qw(AF_INET AF_INET6 inet_pton);

=head1 NAME

PAGI::Server::ProxyHeaders - take client, scheme and host from a trusted reverse proxy

=head1 SYNOPSIS

    my $app = PAGI::Server::ProxyHeaders->wrap($inner_app, '127.0.0.1, 10.0.0.0/8');

=head1 DESCRIPTION

Internal to L<PAGI::Server> (options C<proxy_headers> and
C<forwarded_allow_ips>, CLI C<--proxy-headers> and
C<--forwarded-allow-ips>). Behind a reverse proxy every connection comes
from the proxy; the proxy says who the real client was in
C<X-Forwarded-For>, C<X-Forwarded-Proto>, C<X-Forwarded-Host> or the
standard C<Forwarded> header (RFC 7239, which wins when both are present).

Those headers are believed only when the connection comes from a trusted
peer: an address or network in C<forwarded_allow_ips> (comma-separated
IPv4/IPv6 addresses and CIDR networks, or C<*> for any peer), or a
Unix-domain socket, which only processes allowed by its file mode can
reach. From an untrusted peer the scope is passed on untouched.

From a trusted peer the app gets a shallow copy of the scope (the original
is never changed, PAGI-SPEC 1.7) where:

=over 4

=item * C<client> is C<[ip, port]> of the client: the right-most address of
the C<for> list that is not itself a trusted proxy (the left-most when all
are); the port is 0 unless C<Forwarded> gave one;

=item * C<scheme> is the forwarded protocol (C<http>/C<https>, or
C<ws>/C<wss> for WebSocket scopes); other values are ignored;

=item * C<server> is C<[host, port]> from the forwarded host (port 443 or
80 by scheme when none is given).

=back

Of repeated C<proto> and C<host> values the last one counts: it was set by
the proxy nearest to this server, the one that is trusted. Lifespan scopes
pass through.

=head1 METHODS

=head2 wrap

    my $app = PAGI::Server::ProxyHeaders->wrap($app, $trusted);

C<$trusted> is a comma-separated string or an array reference.

=cut

sub wrap {
    my ($class, $app, $trusted) = @_;
    my $trust = _parse_trusted($trusted);
    return sub {
        my ($scope) = @_;
        return $app->(@_) if $scope->{type} eq 'lifespan';
        my $client = $scope->{client};
        return $app->(@_) if $client && !_is_trusted($trust, $client->[0]);
        my $rewritten = _rewrite($scope, $trust);
        return $rewritten ? $app->($rewritten, @_[ 1 .. $#_ ]) : $app->(@_);
    };
}

=head2 trust

    my $trust = PAGI::Server::ProxyHeaders->trust('10.0.0.0/8, ::1');

Parses a trusted-proxy list once, for L</apply>.

=cut

sub trust {
    my ($class, $trusted) = @_;
    return _parse_trusted($trusted);
}

=head2 apply

    PAGI::Server::ProxyHeaders->apply($scope, $trust);

Rewrites C<client>, C<scheme> and C<server> of a scope in place when its
peer is trusted. For the server, which owns the scope before any app sees
it; middleware should use L</wrap>, which copies.

=cut

sub apply {
    my ($class, $scope, $trust) = @_;
    return if $scope->{type} eq 'lifespan';
    my $client = $scope->{client};
    return if $client && !_is_trusted($trust, $client->[0]);
    my $rewritten = _rewrite($scope, $trust) or return;
    @$scope{ keys %$rewritten } = values %$rewritten;
    return;
}

=head2 check_trusted

Undef when a C<forwarded_allow_ips> value parses, else the problem.

=cut

sub check_trusted {
    my ($class, $value) = @_;
    return undef if eval { _parse_trusted($value); 1 };
    return $@ =~ s/\n\z//r;
}

# [ all => 0|1, nets => [ [packed network, prefix bits], ... ] ]
sub _parse_trusted {
    my ($value) = @_;
    my @items = ref $value eq 'ARRAY' ? @$value : split /\s*,\s*/, ($value // '');
    my $trust = { all => 0, nets => [] };
    for my $item (grep { length } map { s/\A\s+|\s+\z//gr } @items) {
        if ($item eq '*') { $trust->{all} = 1; next }
        my ($ip, $bits) = $item =~ m{\A([^/]+)(?:/(\d+))?\z} or die "cannot parse '$item' as an address or network\n";
        my $packed = _pack_ip($ip) // die "'$ip' is not an IP address\n";
        my $max = length($packed) * 8;
        $bits //= $max;
        die "'$item' has a prefix longer than $max bits\n" if $bits > $max;
        push @{ $trust->{nets} }, [ $packed, $bits ];
    }
    return $trust;
}

sub _pack_ip {
    my ($ip) = @_;
    return undef unless defined $ip;
    $ip =~ s/\A\[(.*)\]\z/$1/;
    return inet_pton($ip =~ /:/ ? AF_INET6 : AF_INET, $ip);
}

sub _is_trusted {
    my ($trust, $ip) = @_;
    return 1 if $trust->{all};
    my $packed = _pack_ip($ip) // return 0;
    for my $net (@{ $trust->{nets} }) {
        my ($want, $bits) = @$net;
        next unless length $want == length $packed;
        my $full = int($bits / 8);
        next unless substr($packed, 0, $full) eq substr($want, 0, $full);
        my $rest = $bits % 8 or return 1;
        my $mask = (0xff << (8 - $rest)) & 0xff;
        return 1 if (ord(substr($packed, $full, 1)) & $mask) == (ord(substr($want, $full, 1)) & $mask);
    }
    return 0;
}

# Every value of the named request header, comma-joined as HTTP allows.
sub _header {
    my ($scope, $name) = @_;
    my @values = map { $_->[1] } grep { $_->[0] eq $name } @{ $scope->{headers} || [] };
    return @values ? join(',', @values) : undef;
}

sub _rewrite {
    my ($scope, $trust) = @_;
    my ($for, $proto, $host);
    if (defined(my $forwarded = _header($scope, 'forwarded'))) {
        my @elements = _parse_forwarded($forwarded);
        $for = [ map { $_->{for} } grep { defined $_->{for} } @elements ];
        ($proto) = reverse grep { defined } map { $_->{proto} } @elements;
        ($host)  = reverse grep { defined } map { $_->{host} } @elements;
    }
    else {
        my $xff = _header($scope, 'x-forwarded-for');
        $for = [ grep { length } map { s/\A\s+|\s+\z//gr } split /,/, $xff ] if defined $xff;
        ($proto) = reverse map { s/\A\s+|\s+\z//gr } split /,/, _header($scope, 'x-forwarded-proto') // '';
        ($host)  = reverse map { s/\A\s+|\s+\z//gr } split /,/, _header($scope, 'x-forwarded-host') // '';
    }
    my %new;
    if ($for && @$for) {
        my ($ip, $port) = _client_of($for, $trust);
        $new{client} = [ $ip, $port // 0 ] if defined $ip;
    }
    if (defined $proto && $proto =~ /\A(https?|wss?)\z/i) {
        my $secure = lc($1) =~ /s\z/;
        $new{scheme} = $scope->{type} eq 'websocket' ? ($secure ? 'wss' : 'ws') : ($secure ? 'https' : 'http');
    }
    if (defined $host && length $host) {
        my ($name, $port) = $host =~ /\A\[([^\]]+)\](?::(\d+))?\z/ ? ($1, $2)
                          : $host =~ /\A([^:]+)(?::(\d+))?\z/     ? ($1, $2)
                          : ();
        if (defined $name) {
            my $scheme = $new{scheme} // $scope->{scheme} // 'http';
            $new{server} = [ $name, defined $port ? $port + 0 : ($scheme =~ /s\z/ ? 443 : 80) ];
        }
    }
    return undef unless %new;
    return { %$scope, %new };
}

# The right-most hop that is not a trusted proxy; the left-most when all are.
sub _client_of {
    my ($hops, $trust) = @_;
    my @parsed = map { [ _split_node($_) ] } @$hops;
    for my $hop (reverse @parsed) {
        next unless defined $hop->[0];
        return @$hop unless _is_trusted($trust, $hop->[0]);
    }
    my ($first) = grep { defined $_->[0] } @parsed;
    return $first ? @$first : ();
}

# "192.0.2.1", "192.0.2.1:4711", "[2001:db8::1]:4711", "2001:db8::1";
# obfuscated identifiers ("unknown", "_hidden") give no address.
sub _split_node {
    my ($node) = @_;
    $node =~ s/\A\s+|\s+\z//g;
    my ($ip, $port) = $node =~ /\A\[([^\]]+)\](?::(\d+))?\z/ ? ($1, $2)
                    : $node =~ /\A([0-9.]+)(?::(\d+))?\z/    ? ($1, $2)
                    : ($node, undef);
    return () unless defined _pack_ip($ip);
    return ($ip, defined $port ? $port + 0 : undef);
}

# Forwarded: for=a;proto=https, for="[2001:db8::1]:80" → list of {for, proto, host, by}.
sub _parse_forwarded {
    my ($value) = @_;
    my (@elements, %current);
    while ($value =~ /\G[\s,;]*([!#\$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*([;,]?)/gc) {
        my ($key, $v, $sep) = (lc $1, $2, $3);
        $v = substr($v, 1, -1) =~ s/\\(.)/$1/gr if $v =~ /\A"/;
        $current{$key} //= $v;
        if ($sep eq ',') { push @elements, {%current}; %current = () }
    }
    push @elements, {%current} if %current;
    return @elements;
}

1;
