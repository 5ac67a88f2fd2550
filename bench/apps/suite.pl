# bench/run: every scenario of the suite as one PAGI app, written the way a
# user writes one (an async sub awaiting each $send). suite.psgi,
# suite-mojo.pl and suite_asgi.py answer the same routes with the same bytes:
#   GET /          200 text/plain "Hello, World!\n"
#   GET /json      200 application/json {"message":"Hello, World!"} (encoded per request)
#   GET /64k       200 application/octet-stream, 65536 bytes built once
#   POST /echo     200 application/octet-stream, the request body
#   POST /upload   200 text/plain, the byte count of the body (read in pieces)
#   GET /download  200 application/octet-stream, 1 GiB in 64 KiB sends (?bytes=N: N)
#   WebSocket /ws  every message back, text as text, binary as binary
#   SSE /sse       the closed-loop fan-out hub of apps/sse-fanout.pl (loaded from it)
use strict;
use warnings;
use Future::AsyncAwait;
use File::Basename ();
use File::Spec;
use JSON::MaybeXS ();

my $JSON      = JSON::MaybeXS->new(utf8 => 1, canonical => 1);
my $BLOB_64K  = 'x' x 65536;
my $CHUNK     = 'd' x 65536;
my $DOWNLOAD  = 1073741824;    # bytes for GET /download

async sub respond {
    my ($send, $type, $body) = @_;
    await $send->({ type => 'http.response.start', status => 200,
        headers => [ [ 'content-type', $type ], [ 'content-length', length $body ] ] });
    await $send->({ type => 'http.response.body', body => $body, more => 0 });
}

async sub http {
    my ($scope, $receive, $send) = @_;
    my ($method, $path) = @{$scope}{qw(method path)};
    if ($path eq '/') {
        return await respond($send, 'text/plain', "Hello, World!\n");
    }
    if ($path eq '/json') {
        return await respond($send, 'application/json', $JSON->encode({ message => 'Hello, World!' }));
    }
    if ($path eq '/64k') {
        return await respond($send, 'application/octet-stream', $BLOB_64K);
    }
    if ($path eq '/echo' && $method eq 'POST') {
        my $body = '';
        while (1) {
            my $ev = await $receive->();
            last if $ev->{type} ne 'http.request';
            $body .= $ev->{body} // '';
            last unless $ev->{more};
        }
        return await respond($send, 'application/octet-stream', $body);
    }
    if ($path eq '/upload' && $method eq 'POST') {
        my $count = 0;
        while (1) {
            my $ev = await $receive->();
            last if $ev->{type} ne 'http.request';
            $count += length($ev->{body} // '');
            last unless $ev->{more};
        }
        return await respond($send, 'text/plain', $count);
    }
    if ($path eq '/download') {
        # ?bytes=N (a multiple of 64 KiB) shortens it, for bench/run --quick.
        my $size = ($scope->{query_string} // '') =~ /\bbytes=(\d+)/ ? $1 : $DOWNLOAD;
        await $send->({ type => 'http.response.start', status => 200, headers => [
            [ 'content-type', 'application/octet-stream' ], [ 'content-length', $size ] ] });
        for my $i (1 .. $size / length $CHUNK) {
            await $send->({ type => 'http.response.body', body => $CHUNK, more => 1 });
        }
        return await $send->({ type => 'http.response.body', body => '', more => 0 });
    }
    await $send->({ type => 'http.response.start', status => 404,
        headers => [ [ 'content-type', 'text/plain' ], [ 'content-length', 10 ] ] });
    await $send->({ type => 'http.response.body', body => "Not Found\n", more => 0 });
}

async sub websocket {
    my ($scope, $receive, $send) = @_;
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

# --- SSE: the closed-loop fan-out hub of apps/sse-fanout.pl, that app itself.
my $sse_fanout = do(File::Spec->rel2abs('sse-fanout.pl', File::Basename::dirname(__FILE__)))
    or die "cannot load apps/sse-fanout.pl: ", $@ || $!, "\n";

async sub app {
    my ($scope, $receive, $send) = @_;
    return await http($scope, $receive, $send)      if $scope->{type} eq 'http';
    return await websocket($scope, $receive, $send) if $scope->{type} eq 'websocket';
    return await $sse_fanout->($scope, $receive, $send) if $scope->{type} eq 'sse';
    die "Unsupported scope type: $scope->{type}\n";
}

\&app;
