# PAGI::Middleware::CORS: simple requests, preflight, origins list / code /
# '*', credentials, Vary, SSE, and a preflight over a real socket.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Future::AsyncAwait;
use PAGI::Test::Events qw(http_scope call_app response_of);
use PAGI::Test::Server qw(start_server stop_server raw_exchange parse_responses);
use PAGI::Middleware::CORS;

my $calls = 0;
my $inner = async sub {
    my ($scope, $receive, $send) = @_;
    $calls++;
    if ($scope->{type} eq 'sse') {
        await $send->({ type => 'sse.start', status => 200, headers => [] });
        return;
    }
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ], [ 'vary', 'Accept' ] ] });
    await $send->({ type => 'http.response.body', body => 'ok' });
};
sub cors { PAGI::Middleware::CORS->new(@_)->wrap($inner) }

subtest 'simple requests' => sub {
    my $app = cors(origins => [ 'https://a.example', 'https://B.example' ], expose => ['X-Request-Id']);
    my $r = response_of(call_app($app, http_scope(headers => [ origin => 'https://a.example' ])));
    is($r->{header}{'access-control-allow-origin'}, 'https://a.example', 'an allowed origin is echoed');
    is($r->{header}{'access-control-expose-headers'}, 'X-Request-Id', 'exposed headers');
    is($r->{header}{vary}, 'Accept, Origin', 'Vary: Origin merged into the app\'s Vary');
    ok(!exists $r->{header}{'access-control-allow-credentials'}, 'no credentials unless asked');
    is(response_of(call_app($app, http_scope(headers => [ origin => 'https://b.example' ])))->{header}{'access-control-allow-origin'},
        'https://b.example', 'origins compare case-insensitively');
    $r = response_of(call_app($app, http_scope(headers => [ origin => 'https://evil.example' ])));
    is($r->{status}, 200, 'another origin still reaches the app');
    ok(!exists $r->{header}{'access-control-allow-origin'}, 'but gets no CORS headers');
    is($r->{header}{vary}, 'Accept, Origin', 'and Vary: Origin');
    $r = response_of(call_app($app, http_scope()));
    ok(!exists $r->{header}{'access-control-allow-origin'}, 'no Origin: no CORS headers');
};

subtest 'preflight' => sub {
    my $app = cors(origins => ['https://a.example'], methods => [qw(GET PUT)], headers => ['Content-Type', 'X-Token'],
                   max_age => 120, credentials => 1);
    $calls = 0;
    my $r = response_of(call_app($app, http_scope(method => 'OPTIONS', headers => [
        origin => 'https://a.example', 'access-control-request-method' => 'PUT',
        'access-control-request-headers' => 'content-type, x-token' ])));
    is($r->{status}, 204, 'preflight: 204');
    is($calls, 0, 'the app is not called');
    is($r->{header}{'access-control-allow-origin'}, 'https://a.example', 'Allow-Origin');
    is($r->{header}{'access-control-allow-methods'}, 'GET, PUT', 'Allow-Methods');
    is($r->{header}{'access-control-allow-headers'}, 'Content-Type, X-Token', 'Allow-Headers');
    is($r->{header}{'access-control-max-age'}, 120, 'Max-Age');
    is($r->{header}{'access-control-allow-credentials'}, 'true', 'Allow-Credentials');
    like($r->{header}{vary}, qr/\AOrigin\b/, 'Vary: Origin');
    $r = response_of(call_app($app, http_scope(method => 'OPTIONS', headers => [
        origin => 'https://a.example', 'access-control-request-method' => 'DELETE' ])));
    is($r->{status}, 403, 'a method not allowed: 403');
    ok(!exists $r->{header}{'access-control-allow-origin'}, 'without CORS headers');
    $r = response_of(call_app($app, http_scope(method => 'OPTIONS', headers => [
        origin => 'https://a.example', 'access-control-request-method' => 'GET', 'access-control-request-headers' => 'X-Other' ])));
    is($r->{status}, 403, 'a header not allowed: 403');
    $r = response_of(call_app($app, http_scope(method => 'OPTIONS', headers => [
        origin => 'https://evil.example', 'access-control-request-method' => 'GET' ])));
    is($r->{status}, 403, 'an origin not allowed: 403');
    $calls = 0;
    $r = response_of(call_app($app, http_scope(method => 'OPTIONS', headers => [ origin => 'https://a.example' ])));
    is($calls, 1, 'OPTIONS without Access-Control-Request-Method goes to the app');
};

subtest "'*', code, credentials" => sub {
    my $r = response_of(call_app(cors(origins => '*'), http_scope(headers => [ origin => 'https://x.example' ])));
    is($r->{header}{'access-control-allow-origin'}, '*', "'*': the header is *");
    is($r->{header}{vary}, 'Accept', 'no Vary: Origin for a response the same for every origin');
    $r = response_of(call_app(cors(origins => '*', credentials => 1), http_scope(headers => [ origin => 'https://x.example' ])));
    is($r->{header}{'access-control-allow-origin'}, 'https://x.example', "'*' with credentials echoes the origin");
    is($r->{header}{'access-control-allow-credentials'}, 'true', 'with Allow-Credentials');
    my $app = cors(origins => sub { $_[0] =~ /\.trusted\.example\z/ });
    is(response_of(call_app($app, http_scope(headers => [ origin => 'https://a.trusted.example' ])))->{header}{'access-control-allow-origin'},
        'https://a.trusted.example', 'a code reference allows');
    ok(!exists response_of(call_app($app, http_scope(headers => [ origin => 'https://a.example' ])))->{header}{'access-control-allow-origin'},
        'and refuses');
    my $r2 = response_of(call_app(cors(origins => '*'), http_scope(method => 'OPTIONS', headers => [
        origin => 'https://x.example', 'access-control-request-method' => 'POST', 'access-control-request-headers' => 'X-A, X-B' ])));
    is($r2->{header}{'access-control-allow-headers'}, 'X-A, X-B', 'no headers option: the requested headers are allowed');
};

subtest 'sse and bad options' => sub {
    my $r = call_app(cors(origins => ['https://a.example']), { %{ http_scope(headers => [ origin => 'https://a.example' ]) }, type => 'sse' });
    my ($start) = grep { $_->{type} eq 'sse.start' } @{ $r->{events} };
    is({ map { @$_ } @{ $start->{headers} } }->{'access-control-allow-origin'}, 'https://a.example', 'sse.start gets the header');
    eval { PAGI::Middleware::CORS->new };
    like($@, qr/option 'origins' is required/, 'origins is required');
    eval { PAGI::Middleware::CORS->new(origins => {}) };
    like($@, qr/option 'origins' must be/, 'a bad origins names it');
    eval { PAGI::Middleware::CORS->new(origins => '*', max_age => 'soon') };
    like($@, qr/option 'max_age'/, 'a bad max_age names it');
};

subtest 'preflight over a real socket' => sub {
    my ($server, $port) = start_server(app => cors(origins => ['http://web.example']));
    my $bytes = raw_exchange($port, "OPTIONS /api HTTP/1.1\r\nHost: x\r\nOrigin: http://web.example\r\n"
        . "Access-Control-Request-Method: PUT\r\nConnection: close\r\n\r\n")->get;
    my ($r) = parse_responses($bytes);
    is($r->{status}, 204, 'status 204');
    is($r->{header}{'access-control-allow-methods'}, 'GET, HEAD, POST, PUT, PATCH, DELETE', 'default methods');
    is($r->{header}{'access-control-max-age'}, 600, 'default Max-Age');
    stop_server($server);
};

done_testing;
