# PAGI::Middleware::ErrorHandler: 500 pages in development and production,
# HTML vs text, status exceptions, nothing after the response started; and
# on a real server the connection stays usable after a handled error.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Future::AsyncAwait;
use PAGI::Test::Events qw(http_scope call_app response_of);
use PAGI::Test::Server qw(start_server stop_server raw_exchange parse_responses);
use PAGI::Middleware::ErrorHandler;

{ package Test::NotFound; sub new { bless {}, shift } sub status { 404 } use overload '""' => sub { "no such thing\n" } }

my $inner = async sub {
    my ($scope, $receive, $send) = @_;
    die "lifespan not supported\n" unless $scope->{type} eq 'http';
    die "secret <detail> at line 7\n" if $scope->{path} eq '/die';
    die Test::NotFound->new if $scope->{path} eq '/missing';
    await $send->({ type => 'http.response.start', status => 200, headers => [] });
    die "late failure\n" if $scope->{path} eq '/late';
    await $send->({ type => 'http.response.body', body => 'fine' });
};
my @logged;
my %common = (logger => sub { push @logged, $_[0] });
my $dev = PAGI::Middleware::ErrorHandler->new(%common, development => 1)->wrap($inner);
my $prod = PAGI::Middleware::ErrorHandler->new(%common, development => 0)->wrap($inner);

my $result = call_app($dev, http_scope(path => '/die', headers => [ accept => 'text/html,*/*' ]));
ok(!$result->{error}, 'the failure is handled');
my $r = response_of($result);
is($r->{status}, 500, 'status 500');
like($r->{header}{'content-type'}, qr{text/html}, 'HTML for a browser');
like($r->{body}, qr{secret &lt;detail&gt; at line 7}, 'development: the error, escaped');
like($logged[-1], qr/secret <detail>/, 'and logged');

$r = response_of(call_app($prod, http_scope(path => '/die')));
is($r->{status}, 500, 'production: 500');
like($r->{header}{'content-type'}, qr{text/plain}, 'plain text without Accept: text/html');
unlike($r->{body}, qr/secret/, 'production: no detail');
like($r->{body}, qr/Internal Server Error/, 'a short message');

$r = response_of(call_app($prod, http_scope(path => '/missing')));
is($r->{status}, 404, 'an exception with status 404: 404');

$result = call_app($prod, http_scope(path => '/late'));
like($result->{error}, qr/late failure/, 'after the response started the failure propagates');
is(scalar(grep { $_->{type} eq 'http.response.start' } @{ $result->{events} }), 1, 'no second response start');
like($logged[-1], qr/after the response started/, 'and is logged as such');

is(response_of(call_app($prod, http_scope(path => '/ok')))->{body}, 'fine', 'no error: untouched');

my ($server, $port) = start_server(app => $prod);
my $bytes = raw_exchange($port, "GET /die HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")->get;
my @res = parse_responses($bytes);
is_deeply([ map { $_->{status} } @res ], [ 500, 200 ], 'over a socket: 500, and the keep-alive connection serves the next request');
stop_server($server);

done_testing;
