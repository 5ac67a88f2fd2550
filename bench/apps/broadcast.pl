# bench/run's broadcast scenarios: one message to every connected WebSocket
# or SSE client, done two ways in one app so both run in the same server:
#
#   /loop/...    the app keeps its connections in a hash and loops over their
#                $send, collecting the Futures (Future->wait_all) before it
#                answers the publish request;
#   /engine/...  the server's `groups` extension: each connection sends
#                groups.join, the publish request sends one groups.publish
#                and the engine writes the message to every member in Rust.
#                Without the extension these routes answer 500 (WebSocket:
#                close 1011; SSE: a 500 response) saying so.
#
# Routes (PREFIX is /loop or /engine):
#   GET  /                    200 text/plain "broadcast\n" (readiness probe)
#   GET  PREFIX/check         200 text/plain "loop\n" / "engine BACKEND\n", or 500 with the reason
#   WebSocket PREFIX/ws       accept, join, then the text message "ready"
#   SSE  PREFIX/sse           start, join, then an event with data "ready"
#   POST PREFIX/publish/ws    the body (ASCII text) to every WebSocket client
#   POST PREFIX/publish/sse   the body as the data of one event to every SSE client
# A publish answers 200 text/plain with the number of clients it was queued for.
# bench/loadgen's bcast-load drives it; apps/broadcast_asgi.py is the /loop
# half for uvicorn and granian.
use strict;
use warnings;
use Future;
use Future::AsyncAwait;

my %GROUP = (ws => 'bench-broadcast-ws', sse => 'bench-broadcast-sse');
my %conns = (ws => {}, sse => {});    # the loop's connections: kind => { id => $send }
my $next_id = 0;

sub groups_missing {
    my ($scope) = @_;
    my $g = ($scope->{extensions} // {})->{groups};
    return ref $g eq 'HASH' ? '' : "the server does not offer the groups extension (\$scope->{extensions}{groups})\n";
}

async sub respond {
    my ($send, $status, $body) = @_;
    await $send->({ type => 'http.response.start', status => $status,
        headers => [ [ 'content-type', 'text/plain' ], [ 'content-length', length $body ] ] });
    await $send->({ type => 'http.response.body', body => $body, more => 0 });
}

async sub read_body {
    my ($receive) = @_;
    my $body = '';
    while (1) {
        my $ev = await $receive->();
        last if $ev->{type} ne 'http.request';
        $body .= $ev->{body} // '';
        last unless $ev->{more};
    }
    return $body;
}

async sub http {
    my ($scope, $receive, $send) = @_;
    my ($method, $path) = @{$scope}{qw(method path)};
    return await respond($send, 200, "broadcast\n") if $path eq '/';
    return await respond($send, 200, "loop\n") if $path eq '/loop/check';
    if ($path eq '/engine/check') {
        my $missing = groups_missing($scope);
        return await respond($send, 500, $missing) if $missing;
        return await respond($send, 200, "engine $scope->{extensions}{groups}{backend}\n");
    }
    if ($method eq 'POST' && $path =~ m{\A/(loop|engine)/publish/(ws|sse)\z}) {
        my ($how, $kind) = ($1, $2);
        my $text = await read_body($receive);
        if ($how eq 'loop') {
            my @sends = values %{ $conns{$kind} };
            # Every send started at once, then all awaited: the fastest loop
            # an app can write (awaiting each in turn would be slower still).
            await Future->wait_all($kind eq 'ws'
                ? map { $_->({ type => 'websocket.send', text => $text }) } @sends
                : map { $_->({ type => 'sse.send', data => $text }) } @sends);
            return await respond($send, 200, scalar(@sends) . "\n");
        }
        my $missing = groups_missing($scope);
        return await respond($send, 500, $missing) if $missing;
        my $n = await $send->({ type => 'groups.publish', group => $GROUP{$kind}, text => $text });
        return await respond($send, 200, "$n\n");
    }
    return await respond($send, 404, "Not Found\n");
}

async sub websocket {
    my ($scope, $receive, $send) = @_;
    my ($how) = ($scope->{path} // '') =~ m{\A/(loop|engine)/ws\z};
    my $event = await $receive->();    # websocket.connect
    return await $send->({ type => 'websocket.close', code => 4004, reason => 'Not Found' }) unless $how;
    await $send->({ type => 'websocket.accept' });
    my $id = ++$next_id;
    if ($how eq 'engine') {
        if (my $missing = groups_missing($scope)) {
            return await $send->({ type => 'websocket.close', code => 1011, reason => substr($missing, 0, 120) });
        }
        await $send->({ type => 'groups.join', group => $GROUP{ws} });
    }
    else { $conns{ws}{$id} = $send }
    await $send->({ type => 'websocket.send', text => 'ready' });
    while (1) {
        $event = await $receive->();
        last if $event->{type} eq 'websocket.disconnect';
    }
    delete $conns{ws}{$id};    # the engine drops its members itself
}

async sub sse {
    my ($scope, $receive, $send) = @_;
    my ($how) = ($scope->{path} // '') =~ m{\A/(loop|engine)/sse\z};
    my $missing = !$how ? "Not Found\n" : $how eq 'engine' ? groups_missing($scope) : '';
    if ($missing) {
        await $send->({ type => 'sse.http.response.start', status => $how ? 500 : 404,
            headers => [ [ 'content-type', 'text/plain' ] ] });
        return await $send->({ type => 'sse.http.response.body', body => $missing, more => 0 });
    }
    await $send->({ type => 'sse.start', status => 200 });
    my $id = ++$next_id;
    if ($how eq 'engine') { await $send->({ type => 'groups.join', group => $GROUP{sse} }) }
    else { $conns{sse}{$id} = $send }
    await $send->({ type => 'sse.send', data => 'ready' });
    while (1) {
        my $event = await $receive->();
        last if $event->{type} ne 'sse.request';
    }
    delete $conns{sse}{$id};
}

async sub app {
    my ($scope, $receive, $send) = @_;
    return await http($scope, $receive, $send)      if $scope->{type} eq 'http';
    return await websocket($scope, $receive, $send) if $scope->{type} eq 'websocket';
    return await sse($scope, $receive, $send)       if $scope->{type} eq 'sse';
    die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'lifespan';
    # Lifespan: nothing to set up.
    while (1) {
        my $ev = await $receive->();
        if ($ev->{type} eq 'lifespan.startup') { await $send->({ type => 'lifespan.startup.complete' }) }
        else { await $send->({ type => 'lifespan.shutdown.complete' }); return }
    }
}

\&app;
