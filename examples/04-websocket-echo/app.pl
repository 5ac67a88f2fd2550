# WebSocket echo: every text or binary message comes back unchanged.
# Run: perl -Mblib bin/pagi-server examples/04-websocket-echo/app.pl --port 5000
# Try: python3 -m websockets ws://127.0.0.1:5000/   (then type a line)
#      curl http://127.0.0.1:5000/   (plain HTTP gets a short hint instead)
use strict;
use warnings;
use Future::AsyncAwait;

async sub app {
    my ($scope, $receive, $send) = @_;
    if ($scope->{type} eq 'http') {
        await $send->({ type => 'http.response.start', status => 200,
                        headers => [ [ 'content-type', 'text/plain' ] ] });
        await $send->({ type => 'http.response.body', body => "Connect with a WebSocket client.\n" });
        return;
    }
    die "Unsupported scope type: $scope->{type}\n" if $scope->{type} ne 'websocket';

    my $event = await $receive->();    # websocket.connect
    await $send->({ type => 'websocket.accept' });
    while (1) {
        $event = await $receive->();
        last if $event->{type} eq 'websocket.disconnect';
        if (defined $event->{text}) {
            await $send->({ type => 'websocket.send', text => $event->{text} });
        }
        else {
            await $send->({ type => 'websocket.send', bytes => $event->{bytes} });
        }
    }
}

\&app;
