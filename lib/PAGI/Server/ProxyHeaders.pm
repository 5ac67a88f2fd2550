package PAGI::Server::ProxyHeaders;
use strict;
use warnings;

our $VERSION = '0.01';

use Carp ();
use Socket qw(AF_INET AF_INET6 inet_pton inet_ntop);

=head1 NAME

PAGI::Server::ProxyHeaders - take client, scheme and host from a trusted reverse proxy

=head1 SYNOPSIS

    # What PAGI::Server does with proxy_headers => 1:
    my $proxy = PAGI::Server::ProxyHeaders->new(trusted => '127.0.0.1, 10.0.0.0/8');
    $proxy->apply($scope);

    # As middleware in front of an app (the app gets a rewritten copy):
    my $app = PAGI::Server::ProxyHeaders->wrap($inner_app, '10.0.0.0/8', forwarded_host => 1);

=head1 DESCRIPTION

Used by L<PAGI::Server> for its options C<proxy_headers>,
C<forwarded_allow_ips>, C<forwarded_header> and C<forwarded_host> (CLI
C<--proxy-headers>, C<--forwarded-allow-ips>, C<--forwarded-header>,
C<--forwarded-host>). Behind a reverse proxy every connection comes from
the proxy, which says who the real client was in request headers. Those
headers are believed only when the connection itself comes from a trusted
peer; from any other peer the scope is left exactly as it was.

=head2 Trusted peers

C<trusted> (the C<forwarded_allow_ips> option) is a comma-separated string
or an array reference of:

=over 4

=item * IPv4 or IPv6 addresses (C<127.0.0.1>, C<::1>) and CIDR networks
(C<10.0.0.0/8>, C<fd00::/8>); an IPv4-mapped IPv6 peer
(C<::ffff:10.1.2.3>) matches the IPv4 entries;

=item * C<unix:>, which trusts peers connected over a Unix-domain socket.
Without it they are not trusted: a Unix socket has no peer address to
check, and whoever may connect to it is decided by its file mode, not
here;

=item * C<*>, which trusts every peer, Unix-socket peers included.

=back

An empty list trusts no one. L<PAGI::Server> defaults to C<127.0.0.1,::1>,
or to the C<FORWARDED_ALLOW_IPS> environment variable when it is set.

=head2 What a trusted peer may change

=over 4

=item * C<client> becomes C<[ip, port]> of the client. Proxies append the
address they received a connection from, so the list reads client first,
nearest proxy last. It is walked from the right, skipping addresses that
are themselves trusted; the first one that is not trusted is the client
(the left-most when all are trusted). Earlier entries were sent by the
client and are never believed. When that entry is C<unknown> or an
obfuscated identifier (RFC 7239 section 6.3) the real address is not
known and C<client> is left as it was. The port is 0 unless the entry
carries one. The address is given in its canonical form.

=item * C<scheme> becomes the forwarded protocol: C<http>/C<https>, or
C<ws>/C<wss> in WebSocket scopes (either spelling is accepted for either
scope type). Other values leave it as it was.

=item * C<server> and the C<host> request header, only with
C<forwarded_host>: C<server> becomes C<[host, port]> (port 443 or 80 by
scheme when none is given) and the C<host> header is replaced by the
forwarded value, so that URLs the app builds point at the public name.
Without C<forwarded_host> both stay as received: a proxy that does not set
the header passes a client's own C<X-Forwarded-Host> through.

=back

=head2 Where the values come from

By default from C<X-Forwarded-For> (the client, as above),
C<X-Forwarded-Proto> and C<X-Forwarded-Host> (the last value of each,
which the proxy nearest this server set). A C<Forwarded> header is then
ignored: a proxy that only writes C<X-Forwarded-For> passes a client's own
C<Forwarded> through untouched, and it must not speak for the proxy.

With C<forwarded_header> the standard C<Forwarded> header (RFC 7239) is
used instead and C<X-Forwarded-*> are ignored, for the same reason the
other way round. The C<for> parameters of its elements are walked as
above; C<proto> and C<host> are taken from the same element as the client
(the element the first trusted proxy appended, describing the connection
it received), or from the left-most element when every C<for> is trusted.

A header that does not parse is ignored whole, never applied in part:
C<X-Forwarded-For> must be a list of addresses (IPv4, IPv6, either with a
port as C<1.2.3.4:80> or C<[2001:db8::1]:80>) or C<unknown>;
C<X-Forwarded-Proto> a list of scheme names; C<X-Forwarded-Host> a list of
C<host[:port]>; C<Forwarded> must follow RFC 7239's grammar (C<token=value>
pairs separated by C<;>, elements by C<,>, values a token or a quoted
string, no parameter twice in one element, C<for> and C<by> valid nodes,
C<host> a valid host). Repeated header lines are joined with commas, as
HTTP allows. Empty list elements are skipped (RFC 9110 section 5.6.1).

Lifespan scopes pass through.

=head1 METHODS

=head2 new

    my $proxy = PAGI::Server::ProxyHeaders->new(
        trusted          => '127.0.0.1,::1',   # string or array reference
        forwarded_header => 0,                 # use Forwarded, not X-Forwarded-*
        forwarded_host   => 0,                 # rewrite server and the host header
    );

Croaks when C<trusted> does not parse, naming the bad entry.

=cut

sub new {
    my ($class, %args) = @_;
    my $trust = eval { _parse_trusted($args{trusted}) }
        or Carp::croak('PAGI::Server::ProxyHeaders: trusted: ' . ($@ =~ s/\n\z//r));
    return bless {
        trust            => $trust,
        forwarded_header => $args{forwarded_header} ? 1 : 0,
        forwarded_host   => $args{forwarded_host} ? 1 : 0,
    }, $class;
}

=head2 apply

    $proxy->apply($scope);

Rewrites C<client>, C<scheme> and (with C<forwarded_host>) C<server> and
the C<host> header of the scope in place, when its peer is trusted. For
the server, which owns the scope before any app sees it; middleware should
use L</wrap>, which copies. The C<headers> array is replaced, not edited.

=cut

sub apply {
    my ($self, $scope) = @_;
    my $changes = $self->changes($scope) or return;
    @$scope{ keys %$changes } = values %$changes;
    return;
}

=head2 changes

    my $changes = $proxy->changes($scope);   # { client => [...], ... } or undef

The scope keys a trusted proxy changes, with their new values; undef when
there is nothing to change (untrusted peer, lifespan scope, no usable
header).

=cut

sub changes {
    my ($self, $scope) = @_;
    return undef if $scope->{type} eq 'lifespan' || !$self->peer_is_trusted($scope);
    my $said = $self->{forwarded_header} ? $self->_from_forwarded($scope) : $self->_from_x_forwarded($scope);
    my %new;
    $new{client} = [ $said->{ip}, $said->{port} // 0 ] if defined $said->{ip};
    my $scheme = $scope->{scheme};
    if (defined $said->{proto} && $said->{proto} =~ /\A(?:https?|wss?)\z/) {
        my $secure = $said->{proto} =~ /s\z/;
        $scheme = $new{scheme} = $scope->{type} eq 'websocket' ? ($secure ? 'wss' : 'ws') : ($secure ? 'https' : 'http');
    }
    if ($self->{forwarded_host} && defined $said->{host}) {
        my ($name, $port) = @{ _split_host($said->{host}) };
        $new{server} = [ $name, $port // (($scheme // 'http') =~ /s\z/ ? 443 : 80) ];
        # The forwarded host takes the place of the first host header.
        my $replaced = 0;
        my @headers = map { $_->[0] ne 'host' ? $_ : $replaced++ ? () : [ host => $said->{host} ] } @{ $scope->{headers} || [] };
        unshift @headers, [ host => $said->{host} ] unless $replaced;
        $new{headers} = \@headers;
    }
    return %new ? \%new : undef;
}

=head2 peer_is_trusted

    $proxy->peer_is_trusted($scope);

True when the scope's connection comes from a trusted peer: its C<client>
address is in the list, or it has no C<client> (a Unix-domain socket) and
the list has C<unix:> or C<*>.

=cut

sub peer_is_trusted {
    my ($self, $scope) = @_;
    my $trust = $self->{trust};
    return 1 if $trust->{all};
    return $trust->{unix} unless $scope->{client};
    return _is_trusted($trust, $scope->{client}[0]);
}

=head2 wrap

    my $app = PAGI::Server::ProxyHeaders->wrap($app, $trusted, %options);

Middleware: the app gets a shallow copy of the scope with the changes
applied (the original is never changed, PAGI-SPEC 1.7). C<%options> are
C<forwarded_header> and C<forwarded_host>, as for L</new>.

=cut

sub wrap {
    my ($class, $app, $trusted, %options) = @_;
    my $self = $class->new(%options, trusted => $trusted);
    return sub {
        my ($scope, @rest) = @_;
        my $changes = $self->changes($scope) or return $app->(@_);
        return $app->({ %$scope, %$changes }, @rest);
    };
}

=head2 check_trusted

    my $problem = PAGI::Server::ProxyHeaders->check_trusted('10.0.0.0/33');

Undef when a C<forwarded_allow_ips> value parses, else the problem.

=cut

sub check_trusted {
    my ($class, $value) = @_;
    return undef if eval { _parse_trusted($value); 1 };
    return $@ =~ s/\n\z//r;
}

# { all => 0|1, unix => 0|1, nets => [ [packed network, prefix bits], ... ] }
sub _parse_trusted {
    my ($value) = @_;
    die "must be a string or an array reference\n" if ref $value && ref $value ne 'ARRAY';
    my @items = ref $value ? @$value : split /,/, ($value // '');
    my $trust = { all => 0, unix => 0, nets => [] };
    for my $item (grep { length } map { defined ? s/\A\s+|\s+\z//gr : '' } @items) {
        if ($item eq '*')     { $trust->{all}  = 1; next }
        if ($item eq 'unix:') { $trust->{unix} = 1; next }
        die "'$item': 'unix:' takes no path (it trusts every Unix-socket peer)\n" if $item =~ /\Aunix:/;
        my ($ip, $bits) = $item =~ m{\A([^/]+)(?:/(\d+))?\z} or die "cannot parse '$item' as an address or network\n";
        my $packed = _pack_ip($ip) // die "'$ip' is not an IP address\n";
        my $max = length($packed) * 8;
        $bits //= $max;
        die "'$item' has a prefix longer than $max bits\n" if $bits > $max;
        push @{ $trust->{nets} }, [ $packed, $bits ];
    }
    return $trust;
}

# Packed address of a bare IPv4 or IPv6 literal; undef for anything else.
sub _pack_ip {
    my ($ip) = @_;
    return undef unless defined $ip && $ip =~ /\A[0-9A-Fa-f:.]+\z/;
    return inet_pton($ip =~ /:/ ? AF_INET6 : AF_INET, $ip);
}

my $V4_MAPPED = "\0" x 10 . "\xff\xff";

sub _is_trusted {
    my ($trust, $ip) = @_;
    return 1 if $trust->{all};
    my $packed = _pack_ip($ip) // return 0;
    # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
    my @forms = ($packed);
    push @forms, substr($packed, 12) if length $packed == 16 && substr($packed, 0, 12) eq $V4_MAPPED;
    for my $form (@forms) {
        for my $net (@{ $trust->{nets} }) {
            my ($want, $bits) = @$net;
            next unless length $want == length $form;
            my $full = int($bits / 8);
            next unless substr($form, 0, $full) eq substr($want, 0, $full);
            my $rest = $bits % 8 or return 1;
            my $mask = (0xff << (8 - $rest)) & 0xff;
            return 1 if (ord(substr($form, $full, 1)) & $mask) == (ord(substr($want, $full, 1)) & $mask);
        }
    }
    return 0;
}

# Every value of the named request header, comma-joined as HTTP allows.
sub _header {
    my ($scope, $name) = @_;
    my @values = map { $_->[1] } grep { $_->[0] eq $name } @{ $scope->{headers} || [] };
    return @values ? join(',', @values) : undef;
}

# The non-empty, trimmed elements of a comma-separated header value.
sub _list {
    my ($value) = @_;
    return grep { length } map { s/\A[ \t]+|[ \t]+\z//gr } split /,/, $value, -1;
}

# X-Forwarded-For / -Proto / -Host → { ip, port, proto, host }; each header
# that does not parse contributes nothing.
sub _from_x_forwarded {
    my ($self, $scope) = @_;
    my %said;
    if (defined(my $xff = _header($scope, 'x-forwarded-for'))) {
        my @hops = map { _xff_hop($_) } _list($xff);
        if (@hops && !grep { !defined } @hops) {
            my $client = $self->_client_hop(\@hops);
            @said{qw(ip port)} = @$client{qw(ip port)};
        }
    }
    if (defined(my $proto = _header($scope, 'x-forwarded-proto'))) {
        my @protos = _list($proto);
        $said{proto} = lc $protos[-1] if @protos && !grep { !_is_scheme($_) } @protos;
    }
    if (defined(my $host = _header($scope, 'x-forwarded-host'))) {
        my @hosts = _list($host);
        $said{host} = $hosts[-1] if @hosts && !grep { !_split_host($_) } @hosts;
    }
    return \%said;
}

# Forwarded (RFC 7239) → { ip, port, proto, host }, all from one element.
sub _from_forwarded {
    my ($self, $scope) = @_;
    my $value = _header($scope, 'forwarded') // return {};
    my $elements = _parse_forwarded($value) or return {};
    return {} unless @$elements;
    my @hops = map { defined $_->{for} ? _node($_->{for}) : { ip => undef } } @$elements;
    my $client = $self->_client_hop(\@hops);
    my $element = $elements->[ $client->{index} ];
    my %said = (ip => $client->{ip}, port => $client->{port}, host => $element->{host});
    $said{proto} = lc $element->{proto} if defined $element->{proto};
    return \%said;
}

# The right-most hop that is not a trusted proxy, the left-most when all
# are; with its index. A hop without an address (unknown, obfuscated) is
# never a trusted proxy, so the walk stops there.
sub _client_hop {
    my ($self, $hops) = @_;
    for my $index (reverse 0 .. $#$hops) {
        my $hop = $hops->[$index];
        next if defined $hop->{ip} && _is_trusted($self->{trust}, $hop->{ip});
        return { %$hop, index => $index };
    }
    return { %{ $hops->[0] }, index => 0 };
}

# One X-Forwarded-For entry: 192.0.2.1, 192.0.2.1:4711, 2001:db8::1,
# [2001:db8::1], [2001:db8::1]:4711 or unknown. Undef when it is none.
sub _xff_hop {
    my ($entry) = @_;
    return { ip => undef } if lc $entry eq 'unknown';
    my ($ip, $port) = $entry =~ /\A\[([^\]]*)\](?::(\d{1,5}))?\z/ ? ($1, $2)
                    : $entry =~ /\A([0-9.]+)(?::(\d{1,5}))?\z/   ? ($1, $2)
                    : $entry =~ /:/                               ? ($entry, undef)
                    : return undef;
    return _address($ip, $port, $entry =~ /\A\[/ ? AF_INET6 : undef);
}

# { ip => canonical text, port } for a literal of the given family (either
# when undef), or undef when it is not one or the port is out of range.
sub _address {
    my ($ip, $port, $family) = @_;
    return undef if defined $port && $port > 65535;
    $family //= $ip =~ /:/ ? AF_INET6 : AF_INET;
    return undef unless $ip =~ /\A[0-9A-Fa-f:.]+\z/ && ($family == AF_INET6) == ($ip =~ /:/ ? 1 : 0);
    my $packed = inet_pton($family, $ip) // return undef;
    return { ip => inet_ntop($family, $packed), port => defined $port ? $port + 0 : undef };
}

# RFC 7239 section 6: node = nodename [ ":" node-port ], nodename an IPv4
# address, "[" IPv6 "]", "unknown" or "_obfuscated"; undef when invalid.
my $OBFUSCATED = qr/_[A-Za-z0-9._-]+/;

sub _node {
    my ($node) = @_;
    my ($name, $port) = $node =~ /\A(\[[^\]]*\]|[^:]*)(?::(.*))?\z/s or return undef;
    return undef if defined $port && $port !~ /\A(?:\d{1,5}|$OBFUSCATED)\z/;
    my $numeric_port = defined $port && $port =~ /\A\d+\z/ ? $port : undef;
    return undef if defined $numeric_port && $numeric_port > 65535;
    return { ip => undef } if lc $name eq 'unknown' || $name =~ /\A$OBFUSCATED\z/;
    return $name =~ /\A\[(.*)\]\z/s ? _address($1, $numeric_port, AF_INET6) : _address($name, $numeric_port, AF_INET);
}

sub _is_scheme { $_[0] =~ /\A[A-Za-z][A-Za-z0-9+.-]*\z/ }

# host [":" port] with host a DNS name, an IPv4 address or "[" IPv6 "]";
# returns [name, port or undef], or undef when it is not one.
sub _split_host {
    my ($host) = @_;
    my ($name, $port);
    if ($host =~ /\A\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?\z/) {
        ($name, $port) = ($1, $2);
        return undef unless defined inet_pton(AF_INET6, $name);
    }
    elsif ($host =~ /\A([A-Za-z0-9._~-]+)(?::(\d{1,5}))?\z/) {
        ($name, $port) = ($1, $2);
    }
    else { return undef }
    return undef if defined $port && $port > 65535;
    return [ $name, defined $port ? $port + 0 : undef ];
}

# Forwarded: for=a;proto=https, for="[2001:db8::1]:80" → [ {for, proto, host, ...}, ... ],
# or undef when any part of the value does not follow RFC 7239 section 4.
my $TOKEN  = qr/[!#\$%&'*+.^_`|~0-9A-Za-z-]+/;
my $QUOTED = qr/"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"/;

sub _parse_forwarded {
    my ($value) = @_;
    my @elements;
    my $elements = _quoted_split($value, ',') or return undef;
    for my $element (@$elements) {
        next unless $element =~ /\S/;
        my %params;
        my $pairs = _quoted_split($element, ';') or return undef;
        for my $pair (@$pairs) {
            $pair =~ s/\A[ \t]+|[ \t]+\z//g;
            next unless length $pair;
            my ($key, $v) = $pair =~ /\A($TOKEN)=($TOKEN|$QUOTED)\z/ or return undef;
            $key = lc $key;
            return undef if exists $params{$key};    # RFC 7239 section 4: once per element
            $v = substr($v, 1, -1) =~ s/\\(.)/$1/gr if $v =~ /\A"/;
            $params{$key} = $v;
        }
        for my $key (qw(for by)) {
            return undef if defined $params{$key} && !_node($params{$key});
        }
        return undef if defined $params{host}  && !_split_host($params{host});
        return undef if defined $params{proto} && !_is_scheme($params{proto});
        push @elements, \%params;
    }
    return \@elements;
}

# Splits on $sep outside quoted strings → array reference; undef when a
# quote is left open or a quoted string holds a byte it may not.
sub _quoted_split {
    my ($value, $sep) = @_;
    my @parts = ('');
    while ($value =~ /\G(?:($QUOTED)|(\Q$sep\E)|([^"\Q$sep\E]+)|("))/gc) {
        return undef if defined $4;
        if (defined $2) { push @parts, '' } else { $parts[-1] .= $1 // $3 }
    }
    return \@parts;
}

1;
