# bench/compare-simple.pl: the raw PAGI side. The same two routes and the same
# response bytes as apps/simple-hello.pl, as a user writes a PAGI app by hand:
# an async sub awaiting each $send. The JSON is encoded per request, as
# PAGI::Simple does, so both sides do that work.
use strict; use warnings; use Future::AsyncAwait; use JSON::MaybeXS ();
my $json = JSON::MaybeXS->new(utf8 => 1, canonical => 1);
async sub app {
    my ($scope, $receive, $send) = @_;
    die "Unsupported scope type: $scope->{type}\n" if $scope->{type} ne 'http';
    my ($status, $type, $body) = (404, 'text/plain; charset=utf-8', 'Not Found');
    if ($scope->{path} eq '/') {
        ($status, $type, $body) = (200, 'text/plain; charset=utf-8', 'Hello, World!');
    }
    elsif ($scope->{path} =~ m{\A/users/([^/]+)\z}) {
        ($status, $type, $body) = (200, 'application/json; charset=utf-8', $json->encode({ user_id => $1 }));
    }
    await $send->({ type => 'http.response.start', status => $status,
        headers => [ [ 'content-type', $type ], [ 'content-length', length $body ] ] });
    await $send->({ type => 'http.response.body', body => $body, more => 0 });
}
\&app;
