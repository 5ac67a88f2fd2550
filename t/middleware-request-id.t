# PAGI::Middleware::RequestId: a valid incoming id is kept, an invalid or
# missing one replaced; the id is in the scope and on the response.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Future::AsyncAwait;
use PAGI::Test::Events qw(http_scope call_app response_of);
use PAGI::Test::Server qw(start_server stop_server http_get);
use PAGI::Middleware::RequestId;

my $inner = async sub {
    my ($scope, $receive, $send) = @_;
    if ($scope->{type} eq 'websocket') { await $send->({ type => 'websocket.accept' }); return }
    await $send->({ type => 'http.response.start', status => 200, headers => [] });
    await $send->({ type => 'http.response.body', body => $scope->{'middleware.request_id'} // 'none' });
};
my $app = PAGI::Middleware::RequestId->new->wrap($inner);

my $scope = http_scope(headers => [ 'x-request-id' => 'abc-123.XYZ' ]);
my $r = response_of(call_app($app, $scope));
is($r->{body}, 'abc-123.XYZ', 'a valid incoming id is in the scope');
is($r->{header}{'x-request-id'}, 'abc-123.XYZ', 'and echoed');
ok(!exists $scope->{'middleware.request_id'}, "the caller's scope is unchanged");

for my $bad ("a b", "x\x{7f}", 'a' x 201, '<script>', '') {
    $r = response_of(call_app($app, http_scope(headers => [ 'x-request-id' => $bad ])));
    like($r->{body}, qr/\A[0-9a-f]{32}\z/, 'an invalid incoming id (' . substr($bad, 0, 10) . ') is replaced');
}
my %ids = map { response_of(call_app($app, http_scope()))->{body} => 1 } 1 .. 200;
is(scalar keys %ids, 200, 'generated ids are unique');

$r = response_of(call_app(PAGI::Middleware::RequestId->new(trust_incoming => 0, header => 'X-Trace')->wrap($inner),
    http_scope(headers => [ 'x-trace' => 'given' ])));
isnt($r->{body}, 'given', 'trust_incoming => 0 ignores the client');
is($r->{header}{'x-trace'}, $r->{body}, 'another header name');

my $result = call_app($app, { type => 'websocket', headers => [ [ 'x-request-id', 'ws-1' ] ] });
is({ map { @$_ } @{ $result->{events}[0]{headers} } }->{'x-request-id'}, 'ws-1', 'websocket.accept carries it too');

eval { PAGI::Middleware::RequestId->new(header => 'bad header') };
like($@, qr/option 'header'/, 'a bad header name names the option');

my ($server, $port) = start_server(app => $app);
my $res = http_get($port, '/', 'X-Request-Id' => 'from-client')->get;
is($res->{header}{'x-request-id'}, 'from-client', 'over a real socket');
stop_server($server);

done_testing;
