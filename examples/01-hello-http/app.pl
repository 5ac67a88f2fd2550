# Hello world, as in the PAGI announcement.
# Run: perl -Mblib bin/pagi-server examples/01-hello-http/app.pl --port 5000
#      curl http://127.0.0.1:5000/
use strict;
use warnings;
use Future::AsyncAwait;

async sub app {
    my ($scope, $receive, $send) = @_;
    die "Unsupported scope type: $scope->{type}\n" if $scope->{type} ne 'http';
    await $send->({
        type    => 'http.response.start',
        status  => 200,
        headers => [ [ 'content-type', 'text/plain' ] ],
    });
    await $send->({ type => 'http.response.body', body => "Hello, World!\n", more => 0 });
}
