# The fixed request mix for bench/icount: plain PAGI handlers, each awaiting
# every $send, as users write them.
use strict; use warnings; use Future::AsyncAwait;

my $body_64k = 'x' x 65536;

async sub app {
    my ($scope, $receive, $send) = @_;
    my $type = $scope->{type};
    if ($type eq 'lifespan') {
        while (1) {
            my $event = await $receive->();
            if ($event->{type} eq 'lifespan.startup') {
                await $send->({ type => 'lifespan.startup.complete' });
            } elsif ($event->{type} eq 'lifespan.shutdown') {
                await $send->({ type => 'lifespan.shutdown.complete' });
                return;
            }
        }
    }
    if ($type eq 'websocket') {
        my $event = await $receive->();
        return unless $event->{type} eq 'websocket.connect';
        await $send->({ type => 'websocket.accept' });
        while (1) {
            $event = await $receive->();
            last if $event->{type} ne 'websocket.receive';
            await $send->({ type => 'websocket.send',
                defined $event->{text} ? (text => $event->{text}) : (bytes => $event->{bytes}) });
        }
        return;
    }
    my $path = $scope->{path};
    if ($path eq '/64k') {
        await $send->({ type => 'http.response.start', status => 200,
            headers => [ ['content-type', 'application/octet-stream'] ] });
        await $send->({ type => 'http.response.body', body => $body_64k, more => 0 });
    } elsif ($path eq '/echo') {
        my $body = '';
        while (1) {
            my $event = await $receive->();
            last if $event->{type} ne 'http.request';
            $body .= $event->{body} // '';
            last unless $event->{more};
        }
        await $send->({ type => 'http.response.start', status => 200,
            headers => [ ['content-type', 'application/octet-stream'] ] });
        await $send->({ type => 'http.response.body', body => $body, more => 0 });
    } else {
        await $send->({ type => 'http.response.start', status => 200,
            headers => [ ['content-type', 'text/plain'] ] });
        await $send->({ type => 'http.response.body', body => "Hello, World!\n", more => 0 });
    }
}
\&app;
