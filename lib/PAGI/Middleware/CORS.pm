package PAGI::Middleware::CORS;
use strict;
use warnings;

our $VERSION = '0.01';

use parent 'PAGI::Middleware';
use Future::AsyncAwait;

=head1 NAME

PAGI::Middleware::CORS - Cross-Origin Resource Sharing for PAGI apps

=head1 SYNOPSIS

    enable 'CORS',
        origins     => [ 'https://app.example.com', 'https://admin.example.com' ],
        methods     => [qw(GET POST PUT DELETE)],
        headers     => [qw(Content-Type Authorization)],
        expose      => [qw(X-Request-Id)],
        credentials => 1,
        max_age     => 3600;

    enable 'CORS', origins => '*';
    enable 'CORS', origins => sub { my ($origin, $scope) = @_; $origin =~ /\.example\.com\z/ };

=head1 DESCRIPTION

Implements the CORS protocol of the Fetch standard for C<http> and C<sse>
scopes (an C<EventSource> across origins is a CORS request too);
WebSocket scopes pass through untouched (browsers do not use CORS there;
check the C<Origin> header in the app).

A request without an C<Origin> header is not a CORS request and passes
through unchanged (but see C<Vary> below).

A B<preflight> (C<OPTIONS> with C<Origin> and C<Access-Control-Request-Method>)
is answered here and never reaches the app: C<204> with
C<Access-Control-Allow-Origin>, C<-Allow-Methods>, C<-Allow-Headers>,
C<-Max-Age> and (with C<credentials>) C<-Allow-Credentials>. A preflight
from an origin that is not allowed, or asking for a method that is not,
gets C<403> without CORS headers.

Any other request from an allowed origin goes to the app, and its response
gets C<Access-Control-Allow-Origin> (and C<-Allow-Credentials>,
C<-Expose-Headers>). The response is never buffered: only the
C<http.response.start> (or C<sse.start>) headers change. Headers the app set
itself for CORS are left alone.

Whenever the answer depends on the origin (any C<origins> but C<'*'>
without credentials), C<Vary: Origin> is added, so caches keep one copy per
origin.

=head1 OPTIONS

=over

=item origins

Required. C<'*'> for any origin, an array of allowed origins (exact,
compared case-insensitively, like C<https://example.com>), or a code
reference called as C<< $code->($origin, $scope) >> returning true to allow.
With C<'*'> the header sent is C<*>, except with C<credentials>, where the
request's origin is echoed (the standard forbids C<*> with credentials).

=item methods

Methods a preflight may ask for; default C<GET HEAD POST PUT PATCH DELETE>.

=item headers

Request headers a preflight may ask for. Default: whatever the preflight
asks for (C<Access-Control-Request-Headers> is echoed). An array
allows just those.

=item expose

Response headers scripts may read (C<Access-Control-Expose-Headers>); default none.

=item credentials

True to allow cookies and HTTP authentication (C<Access-Control-Allow-Credentials: true>).

=item max_age

Seconds a browser may cache a preflight answer; default 600.

=back

=cut

sub init {
    my ($self) = @_;
    my $origins = $self->{origins};
    $self->option_error(origins => "is required ('*', an array of origins or a code reference)") unless defined $origins;
    if (ref $origins eq 'ARRAY') {
        $self->{allowed} = { map { lc($_) => 1 } @$origins };
    }
    elsif (ref $origins ne 'CODE' && $origins ne '*') {
        $self->option_error(origins => "must be '*', an array reference or a code reference");
    }
    $self->{methods} //= [qw(GET HEAD POST PUT PATCH DELETE)];
    for my $name (qw(methods headers expose)) {
        $self->option_error($name => 'must be an array reference')
            if defined $self->{$name} && ref $self->{$name} ne 'ARRAY';
    }
    $self->{method_ok} = { map { uc($_) => 1 } @{ $self->{methods} } };
    $self->{header_ok} = { map { lc($_) => 1 } @{ $self->{headers} } } if $self->{headers};
    $self->{max_age} //= 600;
    $self->option_error(max_age => 'must be a whole number of seconds') unless $self->{max_age} =~ /\A\d+\z/;
    $self->{any} = !ref $origins && $origins eq '*';
    $self->{varies} = !($self->{any} && !$self->{credentials});
}

sub scope_types { ('http', 'sse') }

sub _allowed {
    my ($self, $origin, $scope) = @_;
    return 1 if $self->{any};
    return $self->{allowed}{ lc $origin } ? 1 : 0 if $self->{allowed};
    return $self->{origins}->($origin, $scope) ? 1 : 0;
}

# The Access-Control-Allow-Origin (and -Credentials) pairs for an allowed origin.
sub _origin_headers {
    my ($self, $origin) = @_;
    my @pairs = ([ 'access-control-allow-origin' => $self->{varies} ? $origin : '*' ]);
    push @pairs, [ 'access-control-allow-credentials' => 'true' ] if $self->{credentials};
    return @pairs;
}

async sub call {
    my ($self, $scope, $receive, $send, $app) = @_;
    my $headers = $scope->{headers};
    my $origin = $self->header($headers, 'origin');
    my $requested_method = $self->header($headers, 'access-control-request-method');

    if (defined $origin && ($scope->{method} // '') eq 'OPTIONS' && defined $requested_method && $scope->{type} eq 'http') {
        return await $self->_preflight($scope, $send, $origin, $requested_method);
    }

    my $allowed = defined $origin && $self->_allowed($origin, $scope);
    return await $app->($scope, $receive, $send) unless $allowed || $self->{varies};
    my $start_type = $scope->{type} eq 'sse' ? 'sse.start' : 'http.response.start';
    my $cors_send = async sub {
        my ($event) = @_;
        if ($event->{type} eq $start_type) {
            my $out = $event->{headers} || [];
            if ($allowed && !defined $self->header($out, 'access-control-allow-origin')) {
                $out = [ @$out, $self->_origin_headers($origin) ];
                push @$out, [ 'access-control-expose-headers' => join ', ', @{ $self->{expose} } ]
                    if $self->{expose} && @{ $self->{expose} };
            }
            $out = $self->add_vary($out, 'Origin') if $self->{varies};
            $event = { %$event, headers => $out };
        }
        await $send->($event);
    };
    await $app->($scope, $receive, $cors_send);
}

async sub _preflight {
    my ($self, $scope, $send, $origin, $method) = @_;
    my @vary = $self->{varies} ? ([ vary => 'Origin, Access-Control-Request-Method, Access-Control-Request-Headers' ]) : ();
    my $asked = $self->header($scope->{headers}, 'access-control-request-headers') // '';
    my @asked = grep { length } split /\s*,\s*/, $asked;
    my $headers_ok = !$self->{header_ok} || !grep { !$self->{header_ok}{ lc $_ } } @asked;
    unless ($self->_allowed($origin, $scope) && $self->{method_ok}{ uc $method } && $headers_ok) {
        return await $self->send_response($send, 403, [ 'content-type' => 'text/plain; charset=utf-8', @vary ? @{ $vary[0] } : () ],
            "CORS preflight refused\n");
    }
    my @out = ($self->_origin_headers($origin),
        [ 'access-control-allow-methods' => join ', ', @{ $self->{methods} } ],
        [ 'access-control-max-age' => $self->{max_age} ], @vary);
    my $allow_headers = $self->{headers} ? join(', ', @{ $self->{headers} }) : $asked;
    push @out, [ 'access-control-allow-headers' => $allow_headers ] if length $allow_headers;
    await $send->({ type => 'http.response.start', status => 204, headers => \@out });
    await $send->({ type => 'http.response.body', body => '', more => 0 });
}

=head1 SEE ALSO

L<PAGI::Middleware>, L<PAGI::Middleware::Builder>.

=cut

1;
