# PAGI::Middleware::MethodOverride: header and _method on POST only, the
# allowed methods only, the original kept in the scope.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use Future::AsyncAwait;
use PAGI::Test::Events qw(http_scope call_app response_of);
use PAGI::Middleware::MethodOverride;

my $inner = async sub {
    my ($scope, $receive, $send) = @_;
    await $send->({ type => 'http.response.start', status => 200, headers => [] });
    await $send->({ type => 'http.response.body', body => $scope->{method} . ' ' . ($scope->{'middleware.original_method'} // '-') });
};
my $app = PAGI::Middleware::MethodOverride->new->wrap($inner);
sub method_seen { response_of(call_app($app, http_scope(@_)))->{body} }

is(method_seen(method => 'POST', headers => [ 'x-http-method-override' => 'delete' ]), 'DELETE POST', 'header on POST');
is(method_seen(method => 'POST', query_string => 'a=1&_method=PUT'), 'PUT POST', '_method query parameter');
is(method_seen(method => 'POST', query_string => '%5Fmethod=patch'), 'PATCH POST', 'an encoded parameter name');
is(method_seen(method => 'POST', query_string => '_method=PUT', headers => [ 'x-http-method-override' => 'PATCH' ]),
    'PATCH POST', 'the header wins');
is(method_seen(method => 'GET', query_string => '_method=DELETE'), 'GET -', 'never on GET');
is(method_seen(method => 'POST', query_string => '_method=CONNECT'), 'POST -', 'a method not allowed is ignored');
is(method_seen(method => 'POST'), 'POST -', 'nothing asked: POST');
my $scope = http_scope(method => 'POST', query_string => '_method=PUT');
call_app($app, $scope);
is($scope->{method}, 'POST', "the caller's scope is unchanged");

my $only_header = PAGI::Middleware::MethodOverride->new(param => undef, methods => ['PUT'])->wrap($inner);
is(response_of(call_app($only_header, http_scope(method => 'POST', query_string => '_method=PUT')))->{body}, 'POST -',
    'param => undef ignores the query');
eval { PAGI::Middleware::MethodOverride->new(methods => 'PUT') };
like($@, qr/option 'methods' must be an array reference/, 'bad methods names the option');

done_testing;
