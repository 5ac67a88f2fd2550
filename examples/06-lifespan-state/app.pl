# Lifespan and shared state: at startup the app puts a start time and a
# counter (a hashref, so every request shares it) into $scope->{state};
# each request scope gets a shallow copy of that state and bumps the
# counter. Shutdown is acknowledged so the server can exit cleanly.
# Run: perl -Mblib bin/pagi-server examples/06-lifespan-state/app.pl --port 5000
#      curl http://127.0.0.1:5000/ ; curl http://127.0.0.1:5000/
use strict;
use warnings;
use Future::AsyncAwait;

async sub lifespan {
    my ($scope, $receive, $send) = @_;
    while (1) {
        my $event = await $receive->();
        if ($event->{type} eq 'lifespan.startup') {
            # Store containers, not plain values: requests see a shallow
            # copy, so only what is reached through a reference is shared.
            $scope->{state}{started_at} = time;
            $scope->{state}{counter}    = { requests => 0 };
            await $send->({ type => 'lifespan.startup.complete' });
        }
        elsif ($event->{type} eq 'lifespan.shutdown') {
            await $send->({ type => 'lifespan.shutdown.complete' });
            return;
        }
    }
}

async sub http {
    my ($scope, $receive, $send) = @_;
    my $state = $scope->{state} // {};
    die "lifespan state is missing (was the server started with --lifespan off?)\n"
        unless $state->{counter};
    my $count = ++$state->{counter}{requests};
    my $uptime = time - $state->{started_at};

    await $send->({
        type    => 'http.response.start',
        status  => 200,
        headers => [ [ 'content-type', 'text/plain' ] ],
    });
    await $send->({
        type => 'http.response.body',
        body => "request $count since startup at $state->{started_at} (up ${uptime}s)\n",
    });
}

async sub app {
    my ($scope, $receive, $send) = @_;
    return await lifespan($scope, $receive, $send) if $scope->{type} eq 'lifespan';
    return await http($scope, $receive, $send)     if $scope->{type} eq 'http';
    die "Unsupported scope type: $scope->{type}\n";
}

\&app;
