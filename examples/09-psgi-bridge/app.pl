# A PSGI app and a WebSocket endpoint in one server: /ws is a WebSocket echo
# written as plain PAGI code, and every other request goes, unchanged, to a
# small Plack::Builder app through PAGI::App::WrapPSGI. This is how an
# existing PSGI application gains WebSocket (or SSE) endpoints beside it.
# Run: perl -Mblib bin/pagi-server examples/09-psgi-bridge/app.pl --port 5000
# Try: curl http://127.0.0.1:5000/
#      curl -d name=Ada http://127.0.0.1:5000/greet
#      python3 -m websockets ws://127.0.0.1:5000/ws   (then type a line)
use strict;
use warnings;
use Future::AsyncAwait;
use PAGI::App::WrapPSGI;
use Plack::Builder;
use Plack::Request;

# The PSGI side: ordinary Plack code, nothing in it knows about PAGI.
my $psgi_app = builder {
    enable 'ContentLength';
    mount '/greet' => sub {
        my $req = Plack::Request->new(shift);
        return [ 405, [ 'Content-Type' => 'text/plain', 'Allow' => 'POST' ], ["POST a name to /greet\n"] ]
            unless $req->method eq 'POST';
        my $name = $req->body_parameters->get('name') // 'stranger';
        return [ 200, [ 'Content-Type' => 'text/plain; charset=utf-8' ], ["Hello, $name, from the PSGI app!\n"] ];
    };
    mount '/' => sub {
        [ 200, [ 'Content-Type' => 'text/plain' ], ["This page comes from a PSGI app; the WebSocket echo is at /ws.\n"] ];
    };
};
my $wrapped = PAGI::App::WrapPSGI->new(psgi_app => $psgi_app)->to_app;

# The PAGI side: every text or binary message comes back unchanged.
async sub websocket_echo {
    my ($scope, $receive, $send) = @_;
    my $event = await $receive->();    # websocket.connect
    await $send->({ type => 'websocket.accept' });
    while (1) {
        $event = await $receive->();
        last if $event->{type} eq 'websocket.disconnect';
        await $send->(defined $event->{text}
            ? { type => 'websocket.send', text  => $event->{text} }
            : { type => 'websocket.send', bytes => $event->{bytes} });
    }
}

async sub app {
    my ($scope, $receive, $send) = @_;
    if ($scope->{type} eq 'websocket') {
        return await websocket_echo($scope, $receive, $send) if $scope->{path} eq '/ws';
        return await $send->({ type => 'websocket.close' });    # before accept: a 403
    }
    # HTTP requests (SSE-looking ones too) and lifespan are the PSGI app's.
    return await $wrapped->($scope, $receive, $send);
}

\&app;
