# Reading a request body: `$receive` yields http.request events, each with a
# piece of the body, until one has `more` false. The answer reports the
# size and echoes the body back.
# Run: perl -Mblib bin/pagi-server examples/03-request-body/app.pl --port 5000
#      curl --data-binary 'hello body' http://127.0.0.1:5000/echo
use strict;
use warnings;
use Future::AsyncAwait;

async sub app {
    my ($scope, $receive, $send) = @_;
    die "Unsupported scope type: $scope->{type}\n" if $scope->{type} ne 'http';

    my $body = '';
    while (1) {
        my $event = await $receive->();
        # The client went away before sending everything: nobody to answer.
        return if $event->{type} eq 'http.disconnect';
        $body .= $event->{body} // '';
        last unless $event->{more};
    }

    await $send->({
        type    => 'http.response.start',
        status  => 200,
        headers => [ [ 'content-type', 'application/octet-stream' ] ],
    });
    await $send->({
        type => 'http.response.body',
        body => "$scope->{method} $scope->{path}: received " . length($body) . " bytes\n$body",
    });
}

\&app;
