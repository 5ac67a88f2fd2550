# PAGI::Middleware::RateLimit: token bucket per key, 429 with Retry-After
# and RateLimit headers, refill, custom keys, bounded memory, websocket and
# sse refusals, and a 429 over a real socket.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Future::AsyncAwait;
use PAGI::Test::Events qw(http_scope call_app response_of);
use PAGI::Test::Server qw(start_server stop_server http_get);
use PAGI::Middleware::RateLimit;

my $inner = async sub {
    my ($scope, $receive, $send) = @_;
    if ($scope->{type} eq 'websocket') { await $send->({ type => 'websocket.accept' }); return }
    await $send->({ type => 'http.response.start', status => 200, headers => [] });
    await $send->({ type => 'http.response.body', body => 'ok' });
};
my $now = 1000;
my $clock = sub { $now };
sub from { my ($ip) = @_; http_scope(client => [ $ip, 1234 ]) }

subtest 'token bucket' => sub {
    my $mw = PAGI::Middleware::RateLimit->new(rate => 1, burst => 3, clock => $clock);
    my $app = $mw->wrap($inner);
    my @status = map { response_of(call_app($app, from('10.0.0.1')))->{status} } 1 .. 4;
    is_deeply(\@status, [ 200, 200, 200, 429 ], 'burst of 3, then 429');
    my $r = response_of(call_app($app, from('10.0.0.1')));
    is($r->{status}, 429, 'still refused');
    is($r->{header}{'retry-after'}, 1, 'Retry-After: 1 (one token a second)');
    is($r->{header}{'ratelimit-limit'}, 3, 'RateLimit-Limit');
    is($r->{header}{'ratelimit-remaining'}, 0, 'RateLimit-Remaining: 0');
    is($r->{header}{'ratelimit-reset'}, 3, 'RateLimit-Reset: 3 s to full');
    is(response_of(call_app($app, from('10.0.0.2')))->{status}, 200, 'another client has its own bucket');
    $now += 1;
    $r = response_of(call_app($app, from('10.0.0.1')));
    is($r->{status}, 200, 'a second later one token is back');
    is($r->{header}{'ratelimit-remaining'}, 0, 'and taken');
    is(response_of(call_app($app, from('10.0.0.1')))->{status}, 429, 'only one');
    $now += 10;
    $r = response_of(call_app($app, from('10.0.0.1')));
    is($r->{header}{'ratelimit-remaining'}, 2, 'refill stops at burst');
};

subtest 'slow rates and custom keys' => sub {
    my $mw = PAGI::Middleware::RateLimit->new(rate => 0.1, burst => 1, clock => $clock,
        key => sub { my ($scope) = @_; $scope->{path} eq '/free' ? undef : 'shared' });
    my $app = $mw->wrap($inner);
    is(response_of(call_app($app, from('1.1.1.1')))->{status}, 200, 'first');
    my $r = response_of(call_app($app, from('2.2.2.2')));
    is($r->{status}, 429, 'the key is shared across clients');
    is($r->{header}{'retry-after'}, 10, 'Retry-After 10 s at 0.1 tokens/s');
    is(response_of(call_app($app, http_scope(path => '/free')))->{status}, 200, 'an undef key is not limited');
};

subtest 'memory is bounded' => sub {
    my $mw = PAGI::Middleware::RateLimit->new(rate => 10, burst => 10, clock => $clock, max_keys => 50);
    my $app = $mw->wrap($inner);
    call_app($app, from("10.1.0.$_")) for 1 .. 40;
    is($mw->bucket_count, 40, '40 clients: 40 buckets');
    call_app($app, from("10.2.0.$_")) for 1 .. 100;
    cmp_ok($mw->bucket_count, '<=', 50, 'never more than max_keys');
    $now += 5;    # every bucket is full again after burst/rate = 1 s
    call_app($app, from('10.3.0.1'));
    is($mw->bucket_count, 1, 'idle buckets that refilled are dropped');
};

subtest 'websocket and sse' => sub {
    my $mw = PAGI::Middleware::RateLimit->new(rate => 1, burst => 1, clock => $clock);
    my $app = $mw->wrap($inner);
    my $ws = { type => 'websocket', path => '/ws', headers => [], client => [ '9.9.9.9', 1 ], extensions => { 'websocket.http.response' => {} } };
    my $r = call_app($app, $ws);
    is($r->{events}[0]{type}, 'websocket.accept', 'first handshake accepted');
    is({ map { @$_ } @{ $r->{events}[0]{headers} } }->{'ratelimit-remaining'}, 0, 'with the RateLimit headers');
    $r = call_app($app, $ws);
    is($r->{events}[0]{type}, 'websocket.http.response.start', 'the next is denied through the extension');
    is($r->{events}[0]{status}, 429, 'with 429');
    $r = call_app($app, { %$ws, extensions => {} });
    is($r->{events}[0]{type}, 'websocket.close', 'without the extension: websocket.close');
    $r = call_app($app, { %{ from('9.9.9.9') }, type => 'sse' });
    is("$r->{events}[0]{type} $r->{events}[0]{status}", 'sse.http.response.start 429', 'sse: declined with 429');
    my $seen;
    call_app(PAGI::Middleware::RateLimit->new(rate => 1)->wrap(async sub { $seen = 1 }), { type => 'lifespan' });
    ok($seen, 'lifespan passes through');
};

subtest 'options' => sub {
    eval { PAGI::Middleware::RateLimit->new };
    like($@, qr/option 'rate' is required/, 'rate is required');
    eval { PAGI::Middleware::RateLimit->new(rate => -1) };
    like($@, qr/option 'rate' must be a positive number/, 'a negative rate names it');
    eval { PAGI::Middleware::RateLimit->new(rate => 1, burst => 0) };
    like($@, qr/option 'burst'/, 'a zero burst names it');
    eval { PAGI::Middleware::RateLimit->new(rate => 1, key => 'ip') };
    like($@, qr/option 'key' must be a code reference/, 'a bad key names it');
};

subtest 'over a real socket' => sub {
    my ($server, $port) = start_server(app => PAGI::Middleware::RateLimit->new(rate => 0.01, burst => 2)->wrap($inner));
    my @r = map { http_get($port, '/')->get } 1 .. 3;
    is_deeply([ map { $_->{status} } @r ], [ 200, 200, 429 ], '200, 200, 429 for one client');
    cmp_ok($r[2]{header}{'retry-after'}, '>=', 99, 'Retry-After in whole seconds');
    stop_server($server);
};

done_testing;
