# Streaming a response: the body goes out in several pieces sent with
# `more => 1`, a short pause between them. No Content-Length is known up
# front, so the server frames it with Transfer-Encoding: chunked and each
# piece reaches the client as soon as it is sent.
# Run: perl -Mblib bin/pagi-server examples/02-streaming-response/app.pl --port 5000
#      curl -N -i http://127.0.0.1:5000/
use strict;
use warnings;
use Future::AsyncAwait;
use IO::Async::Loop;

my $PIECES = 5;

async sub app {
    my ($scope, $receive, $send) = @_;
    die "Unsupported scope type: $scope->{type}\n" if $scope->{type} ne 'http';

    # IO::Async::Loop->new hands back the loop pagi-server already runs.
    my $loop = IO::Async::Loop->new;

    await $send->({
        type    => 'http.response.start',
        status  => 200,
        headers => [ [ 'content-type', 'text/plain; charset=utf-8' ] ],
    });
    for my $n (1 .. $PIECES) {
        await $send->({ type => 'http.response.body', body => "piece $n of $PIECES\n", more => 1 });
        await $loop->delay_future(after => 0.1);
    }
    # The last event ends the body (more defaults to 0).
    await $send->({ type => 'http.response.body', body => "done\n" });
}

\&app;
