# The PAGI announcement's hello world, as a file that returns the app.
use strict; use warnings; use Future::AsyncAwait;
async sub app {
    my ($scope, $receive, $send) = @_;
    die "Unsupported scope type: $scope->{type}\n" if $scope->{type} ne 'http';
    await $send->({ type => 'http.response.start', status => 200, headers => [ ['content-type', 'text/plain'] ] });
    await $send->({ type => 'http.response.body', body => "Hello, World!\n", more => 0 });
}
\&app;
