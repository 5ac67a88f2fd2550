package PAGI::Middleware::RateLimit;
use strict;
use warnings;

our $VERSION = '0.01';

use parent 'PAGI::Middleware';
use Future::AsyncAwait;
use POSIX ();
use Time::HiRes ();

=head1 NAME

PAGI::Middleware::RateLimit - token-bucket rate limiting per client

=head1 SYNOPSIS

    enable 'RateLimit', rate => 5, burst => 20;              # per client IP
    enable 'RateLimit', rate => 1, burst => 10,
        key => sub { my ($scope) = @_; api_key_of($scope) };   # per API key

=head1 DESCRIPTION

Each key (the client IP address by default) has a bucket holding up to
C<burst> tokens, refilled at C<rate> tokens a second. A request takes one
token; with none left it is refused with C<429 Too Many Requests> and a
C<Retry-After> header (whole seconds until a token is back), without
reaching the app.

Every response, allowed or refused, carries C<RateLimit-Limit> (the burst),
C<RateLimit-Remaining> (whole tokens left) and C<RateLimit-Reset> (seconds
until the bucket is full again), the fields of the IETF RateLimit header
draft.

Applies to C<http> and C<sse> scopes (a refused SSE request gets a plain
C<429> through C<sse.http.response.start>) and to C<websocket> scopes (a
refused handshake gets a C<429> through the C<websocket.http.response>
extension when the server advertises it, else C<websocket.close>, which
the server turns into a C<403>). Lifespan scopes pass through.

Memory is bounded: a bucket that has been idle long enough to be full again
is the same as no bucket, so such buckets are dropped (checked at most once
per refill period); and there are never more than C<max_keys> buckets: at
that size the least recently used are dropped. State is per process (with
C<--workers N>, each worker counts on its own).

=head1 OPTIONS

=over

=item rate

Tokens added per second (may be a fraction, e.g. C<0.5>). Required.

=item burst

Bucket size: how many requests may come at once. Default: C<rate>, at least 1.

=item key

A code reference called with the scope, returning the key to count by
(C<undef> means: do not limit this request). Default: the client IP
(C<< $scope->{client}[0] >>), C<unix> for a Unix-socket peer.

=item max_keys

Most buckets kept; default 100000.

=item clock

A code reference returning the time in seconds; default
C<Time::HiRes::time>. For tests.

=back

=cut

sub init {
    my ($self) = @_;
    my $rate = $self->{rate};
    $self->option_error(rate => 'is required (tokens per second, a positive number)') unless defined $rate;
    $self->option_error(rate => 'must be a positive number') unless $rate =~ /\A\d+(?:\.\d+)?\z/ && $rate > 0;
    $self->{burst} //= $rate < 1 ? 1 : int $rate;
    $self->option_error(burst => 'must be a whole number of at least 1') unless $self->{burst} =~ /\A\d+\z/ && $self->{burst} >= 1;
    $self->{max_keys} //= 100_000;
    $self->option_error(max_keys => 'must be a whole number of at least 1') unless $self->{max_keys} =~ /\A\d+\z/ && $self->{max_keys} >= 1;
    for my $name (qw(key clock)) {
        $self->option_error($name => 'must be a code reference') if defined $self->{$name} && ref $self->{$name} ne 'CODE';
    }
    $self->{clock} //= \&Time::HiRes::time;
    $self->{buckets} = {};
    $self->{refill_period} = $self->{burst} / $rate;    # empty to full
    $self->{last_sweep} = $self->{clock}->();
}

sub scope_types { ('http', 'sse', 'websocket') }

=head1 METHODS

=head2 take

    my ($allowed, $remaining, $retry_after, $reset) = $limiter->take($key);

Takes a token for the key. Used by the middleware; exposed for tests and
for apps that limit something else.

=cut

sub take {
    my ($self, $key) = @_;
    my $now = $self->{clock}->();
    $self->_sweep($now) if $now - $self->{last_sweep} >= $self->{refill_period};
    my $buckets = $self->{buckets};
    my $bucket = $buckets->{$key};
    unless ($bucket) {
        $self->_evict if keys(%$buckets) >= $self->{max_keys};
        $bucket = $buckets->{$key} = [ $self->{burst}, $now ];
    }
    my ($rate, $burst) = @$self{qw(rate burst)};
    my $tokens = $bucket->[0] + ($now - $bucket->[1]) * $rate;
    $tokens = $burst if $tokens > $burst;
    $bucket->[1] = $now;
    my $allowed = $tokens >= 1;
    $tokens -= 1 if $allowed;
    $bucket->[0] = $tokens;
    my $retry_after = $allowed ? 0 : POSIX::ceil((1 - $tokens) / $rate);
    my $reset = POSIX::ceil(($burst - $tokens) / $rate);
    return ($allowed, int $tokens, $retry_after, $reset);
}

# Drops buckets that would be full by now: they carry no information.
sub _sweep {
    my ($self, $now) = @_;
    my $buckets = $self->{buckets};
    my ($rate, $burst) = @$self{qw(rate burst)};
    for my $key (keys %$buckets) {
        my $b = $buckets->{$key};
        delete $buckets->{$key} if $b->[0] + ($now - $b->[1]) * $rate >= $burst;
    }
    $self->{last_sweep} = $now;
}

# At max_keys: the least recently used tenth goes (at least one bucket).
sub _evict {
    my ($self) = @_;
    my $buckets = $self->{buckets};
    my @by_age = sort { $buckets->{$a}[1] <=> $buckets->{$b}[1] } keys %$buckets;
    my $drop = int(@by_age / 10) || 1;
    delete @$buckets{ @by_age[ 0 .. $drop - 1 ] };
}

=head2 bucket_count

How many buckets are kept now.

=cut

sub bucket_count { scalar keys %{ $_[0]{buckets} } }

async sub call {
    my ($self, $scope, $receive, $send, $app) = @_;
    my $key = $self->{key} ? $self->{key}->($scope) : ($scope->{client} ? $scope->{client}[0] : 'unix');
    return await $app->($scope, $receive, $send) unless defined $key;
    my ($allowed, $remaining, $retry_after, $reset) = $self->take($key);
    my @limit_headers = ([ 'ratelimit-limit' => $self->{burst} ], [ 'ratelimit-remaining' => $remaining ],
                         [ 'ratelimit-reset' => $reset ]);
    unless ($allowed) {
        my @headers = ([ 'content-type' => 'text/plain; charset=utf-8' ], [ 'retry-after' => $retry_after ], @limit_headers);
        my $body = "Too Many Requests\n";
        if ($scope->{type} eq 'http') {
            return await $self->send_response($send, 429, \@headers, $body);
        }
        if ($scope->{type} eq 'sse') {
            await $send->({ type => 'sse.http.response.start', status => 429, headers => \@headers });
            return await $send->({ type => 'sse.http.response.body', body => $body, more => 0 });
        }
        if (exists(($scope->{extensions} || {})->{'websocket.http.response'})) {
            await $send->({ type => 'websocket.http.response.start', status => 429, headers => \@headers });
            return await $send->({ type => 'websocket.http.response.body', body => $body, more => 0 });
        }
        return await $send->({ type => 'websocket.close', code => 1008, reason => 'rate limited' });
    }
    my %start = (http => 'http.response.start', sse => 'sse.start', websocket => 'websocket.accept');
    my $start_type = $start{ $scope->{type} };
    my $limited_send = async sub {
        my ($event) = @_;
        $event = { %$event, headers => [ @{ $event->{headers} || [] }, @limit_headers ] } if $event->{type} eq $start_type;
        await $send->($event);
    };
    await $app->($scope, $receive, $limited_send);
}

=head1 SEE ALSO

L<PAGI::Middleware>, L<PAGI::Middleware::Builder>.

=cut

1;
