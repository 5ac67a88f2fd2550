package PAGI::Middleware::TrustedProxies;
use strict;
use warnings;

our $VERSION = '0.01';

use parent 'PAGI::Middleware';
use Future::AsyncAwait;

use PAGI::Server::ProxyHeaders;

=head1 NAME

PAGI::Middleware::TrustedProxies - client address and scheme from a trusted proxy

=head1 SYNOPSIS

    enable 'TrustedProxies', trusted => [ '10.0.0.0/8', '127.0.0.1' ];
    enable 'TrustedProxies', trusted => '192.168.1.5', forwarded_header => 1;

=head1 DESCRIPTION

When the connection comes from a trusted proxy, the app gets a copy of the
scope with C<client> and C<scheme> taken from C<X-Forwarded-For> and
C<X-Forwarded-Proto> (or from the RFC 7239 C<Forwarded> header), and with
C<forwarded_host> also C<server> and the C<host> header from
C<X-Forwarded-Host>. The client is the right-most address that is not
itself a trusted proxy, so a client cannot spoof its address by sending its
own header. Requests from other peers pass through unchanged. Applies to
C<http>, C<websocket> (C<ws>/C<wss>) and C<sse> scopes.

This is the rule of the server's C<proxy_headers> option, from
L<PAGI::Server::ProxyHeaders>; use the middleware when the app, not the
server, should decide (for example on a server without that option).

=head1 OPTIONS

=over

=item trusted

The trusted proxies: addresses and CIDR networks, as a comma-separated
string or an array; C<unix:> for Unix-socket peers; C<*> for every peer.
Default C<127.0.0.1, ::1>. A bad entry croaks, naming it.

=item forwarded_header

True to read C<Forwarded> instead of C<X-Forwarded-*>.

=item forwarded_host

True to take C<server> and C<host> from the forwarded host too.

=back

=cut

sub init {
    my ($self) = @_;
    my $trusted = $self->{trusted} // '127.0.0.1,::1';
    $trusted = join ',', @$trusted if ref $trusted eq 'ARRAY';
    $self->{proxy} = eval {
        PAGI::Server::ProxyHeaders->new(trusted => $trusted, forwarded_header => $self->{forwarded_header},
                                        forwarded_host => $self->{forwarded_host});
    } or $self->option_error(trusted => 'is not valid: ' . ($@ =~ s/\APAGI::Server::ProxyHeaders: trusted: //r =~ s/ at \S+ line \d+.*//sr));
}

sub scope_types { ('http', 'websocket', 'sse') }

sub call {
    my ($self, $scope, $receive, $send, $app) = @_;
    my $changes = $self->{proxy}->changes($scope) or return $app->($scope, $receive, $send);
    return $app->({ %$scope, %$changes }, $receive, $send);
}

=head1 SEE ALSO

L<PAGI::Server::ProxyHeaders>, the C<proxy_headers> option of L<PAGI::Server>.

=cut

1;
