# PAGI::Middleware::TrustedProxies: client and scheme from a trusted peer
# only, right-most untrusted hop, websocket schemes, Forwarded, bad options.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Future::AsyncAwait;
use PAGI::Test::Events qw(http_scope call_app);
use PAGI::Middleware::TrustedProxies;

my $seen;
my $inner = async sub { $seen = $_[0] };
my $app = PAGI::Middleware::TrustedProxies->new(trusted => [ '10.0.0.0/8', '127.0.0.1' ])->wrap($inner);

my $scope = http_scope(client => [ '10.1.2.3', 4000 ], headers => [ 'x-forwarded-for' => '198.51.100.9, 10.9.9.9', 'x-forwarded-proto' => 'https' ]);
call_app($app, $scope);
is($seen->{client}[0], '198.51.100.9', 'the right-most untrusted hop is the client');
is($seen->{scheme}, 'https', 'scheme from X-Forwarded-Proto');
is($scope->{client}[0], '10.1.2.3', "the caller's scope is unchanged");

call_app($app, http_scope(client => [ '203.0.113.5', 4000 ], headers => [ 'x-forwarded-for' => '1.2.3.4' ]));
is($seen->{client}[0], '203.0.113.5', 'an untrusted peer cannot set the client');

call_app($app, http_scope(client => [ '10.0.0.1', 1 ], headers => [ 'x-forwarded-for' => '6.6.6.6, 198.51.100.1' ]));
is($seen->{client}[0], '198.51.100.1', 'a spoofed left-most entry is ignored');

call_app($app, { type => 'websocket', scheme => 'ws', client => [ '127.0.0.1', 1 ], headers => [ [ 'x-forwarded-proto', 'https' ] ] });
is($seen->{scheme}, 'wss', 'websocket: https becomes wss');

my $fwd = PAGI::Middleware::TrustedProxies->new(trusted => '127.0.0.1', forwarded_header => 1)->wrap($inner);
call_app($fwd, http_scope(headers => [ forwarded => 'for=192.0.2.60;proto=https' ]));
is("$seen->{client}[0] $seen->{scheme}", '192.0.2.60 https', 'Forwarded header');

eval { PAGI::Middleware::TrustedProxies->new(trusted => '10.0.0.0/33') };
like($@, qr/option 'trusted' is not valid: .*10\.0\.0\.0\/33/, 'a bad network names the option');

done_testing;
