package PAGI::Middleware::SecurityHeaders;
use strict;
use warnings;

our $VERSION = '0.01';

use parent 'PAGI::Middleware';
use Future::AsyncAwait;

=head1 NAME

PAGI::Middleware::SecurityHeaders - common security response headers

=head1 SYNOPSIS

    enable 'SecurityHeaders';                       # the defaults below
    enable 'SecurityHeaders',
        frame_options => 'SAMEORIGIN',
        hsts          => { max_age => 63072000, include_subdomains => 1, preload => 1 },
        csp           => "default-src 'self'";

=head1 DESCRIPTION

Adds these headers to every C<http> response (and C<sse.start>), unless the
app already set that header (the app's value wins):

=over

=item content_type_options

C<X-Content-Type-Options>; default C<nosniff>.

=item frame_options

C<X-Frame-Options>; default C<DENY>.

=item referrer_policy

C<Referrer-Policy>; default C<strict-origin-when-cross-origin>.

=item hsts

C<Strict-Transport-Security>, sent only when the scope's scheme is
C<https> (RFC 6797 forbids it over plain HTTP). A hash with C<max_age>
(default 15552000, 180 days), C<include_subdomains> and C<preload>.
Default on with those defaults.

=item csp

C<Content-Security-Policy>; none by default.

=item permissions_policy

C<Permissions-Policy>; none by default.

=back

Any option set to C<undef> turns that header off (C<< hsts => undef >> too).
Only the response head changes; bodies stream through untouched.

=cut

my %HEADER = (
    content_type_options => 'x-content-type-options',
    frame_options        => 'x-frame-options',
    referrer_policy      => 'referrer-policy',
    csp                  => 'content-security-policy',
    permissions_policy   => 'permissions-policy',
);
my %DEFAULT = (
    content_type_options => 'nosniff',
    frame_options        => 'DENY',
    referrer_policy      => 'strict-origin-when-cross-origin',
    hsts                 => {},
);

sub init {
    my ($self) = @_;
    for my $name (keys %DEFAULT) {
        $self->{$name} = $DEFAULT{$name} unless exists $self->{$name};
    }
    my @always;
    for my $name (sort keys %HEADER) {
        my $value = $self->{$name};
        next unless defined $value;
        $self->option_error($name => 'must be a string') if ref $value;
        $self->option_error($name => 'must not contain CR, LF or NUL') if $value =~ /[\r\n\0]/;
        push @always, [ $HEADER{$name} => $value ];
    }
    $self->{always} = \@always;
    if (defined(my $hsts = $self->{hsts})) {
        $self->option_error(hsts => 'must be a hash reference or undef') unless ref $hsts eq 'HASH';
        my $max_age = $hsts->{max_age} // 15552000;
        $self->option_error(hsts => "max_age must be a whole number of seconds") unless $max_age =~ /\A\d+\z/;
        $self->{hsts_value} = "max-age=$max_age" . ($hsts->{include_subdomains} ? '; includeSubDomains' : '')
            . ($hsts->{preload} ? '; preload' : '');
    }
}

sub scope_types { ('http', 'sse') }

async sub call {
    my ($self, $scope, $receive, $send, $app) = @_;
    my @add = @{ $self->{always} };
    push @add, [ 'strict-transport-security' => $self->{hsts_value} ]
        if defined $self->{hsts_value} && ($scope->{scheme} // '') eq 'https';
    my $start_type = $scope->{type} eq 'sse' ? 'sse.start' : 'http.response.start';
    my $secure_send = async sub {
        my ($event) = @_;
        if ($event->{type} eq $start_type) {
            my $headers = $event->{headers} || [];
            my %has = map { lc($_->[0]) => 1 } @$headers;
            $event = { %$event, headers => [ @$headers, grep { !$has{ $_->[0] } } @add ] };
        }
        await $send->($event);
    };
    await $app->($scope, $receive, $secure_send);
}

=head1 SEE ALSO

L<PAGI::Middleware>, L<PAGI::Middleware::Builder>.

=cut

1;
