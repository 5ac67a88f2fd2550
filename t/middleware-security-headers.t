# PAGI::Middleware::SecurityHeaders: defaults, HSTS on https only, CSP,
# the app's own headers win, options turn headers off or croak.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Future::AsyncAwait;
use PAGI::Test::Events qw(http_scope call_app response_of);
use PAGI::Middleware::SecurityHeaders;

my $inner = async sub {
    my ($scope, $receive, $send) = @_;
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'X-Frame-Options', 'SAMEORIGIN' ] ] });
    await $send->({ type => 'http.response.body', body => 'a', more => 1 });
    await $send->({ type => 'http.response.body', body => 'b', more => 0 });
};

my $app = PAGI::Middleware::SecurityHeaders->new(csp => "default-src 'self'")->wrap($inner);
my $result = call_app($app, http_scope());
my $r = response_of($result);
is($r->{header}{'x-content-type-options'}, 'nosniff', 'X-Content-Type-Options: nosniff');
is($r->{header}{'referrer-policy'}, 'strict-origin-when-cross-origin', 'Referrer-Policy');
is($r->{header}{'content-security-policy'}, "default-src 'self'", 'CSP when asked');
is(scalar(grep { lc $_->[0] eq 'x-frame-options' } @{ $r->{headers} }), 1, "the app's X-Frame-Options is not duplicated");
is($r->{header}{'x-frame-options'}, 'SAMEORIGIN', 'and wins');
ok(!exists $r->{header}{'strict-transport-security'}, 'no HSTS over http');
is(scalar(grep { $_->{type} eq 'http.response.body' } @{ $result->{events} }), 2, 'the body still streams in two events');

$r = response_of(call_app($app, http_scope(scheme => 'https')));
is($r->{header}{'strict-transport-security'}, 'max-age=15552000', 'HSTS over https');
$r = response_of(call_app(PAGI::Middleware::SecurityHeaders->new(hsts => { max_age => 60, include_subdomains => 1, preload => 1 },
    frame_options => undef)->wrap(async sub {
        my ($s, $rc, $send) = @_;
        await $send->({ type => 'http.response.start', status => 204 });
        await $send->({ type => 'http.response.body' });
    }), http_scope(scheme => 'https')));
is($r->{header}{'strict-transport-security'}, 'max-age=60; includeSubDomains; preload', 'HSTS options');
ok(!exists $r->{header}{'x-frame-options'}, 'undef turns a header off');

eval { PAGI::Middleware::SecurityHeaders->new(csp => "a\r\nb: c") };
like($@, qr/option 'csp' must not contain CR/, 'header injection refused, naming the option');
eval { PAGI::Middleware::SecurityHeaders->new(hsts => 1) };
like($@, qr/option 'hsts'/, 'a bad hsts names it');

my $seen;
my $ws = { type => 'websocket', headers => [] };
call_app(PAGI::Middleware::SecurityHeaders->new->wrap(async sub { $seen = $_[0] }), $ws);
is($seen, $ws, 'websocket scopes pass through');

done_testing;
