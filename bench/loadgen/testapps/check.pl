# A PAGI app for checking the loadgen tools by hand (not a benchmark app):
#   GET  /sse              free-running event stream: `id:` 1, 2, 3 ... and a
#                          64-byte `data:`, each $send awaited, until the client goes
#   POST /upload           reads the whole body, answers its length in bytes
#   GET  /download?bytes=N N bytes (default 1 GiB) in 64 KiB chunks, each $send awaited
#   GET  /                 "ok"
# Run: perl -Mblib bin/pagi-server --app bench/loadgen/testapps/check.pl --port 5000 --max-body-size 0
use strict;
use warnings;
use Future::AsyncAwait;
use IO::Async::Loop;

my $CHUNK = 'x' x 65536;

async sub sse {
    my ($scope, $receive, $send) = @_;
    await $send->({ type => 'sse.start', status => 200 });
    my $gone = $receive->()->then(sub {
        my ($ev) = @_;
        return $ev->{type} eq 'sse.request' ? $receive->() : Future->done($ev);
    });
    my $id = 0;
    my $data = 'd' x 64;
    my $loop = IO::Async::Loop->new;
    until ($gone->is_ready) {
        await $send->({ type => 'sse.send', id => ++$id, data => $data });
        # A send to a vanished client completes at once, so without this turn
        # of the loop $gone would never be seen and the stream would spin.
        if ($id % 64 == 0) {
            my $turn = $loop->new_future;
            $loop->later(sub { $turn->done });
            await $turn;
        }
    }
}

async sub upload {
    my ($receive, $send) = @_;
    my $n = 0;
    while (1) {
        my $ev = await $receive->();
        last if $ev->{type} ne 'http.request';
        $n += length($ev->{body} // '');
        last unless $ev->{more};
    }
    await respond($send, "$n\n");
}

async sub download {
    my ($scope, $send) = @_;
    my ($n) = ($scope->{query_string} // '') =~ /(?:^|&)bytes=(\d+)/;
    $n //= 1 << 30;
    await $send->({ type => 'http.response.start', status => 200,
                    headers => [ [ 'content-type', 'application/octet-stream' ], [ 'content-length', $n ] ] });
    while ($n > 0) {
        my $len = $n < length $CHUNK ? $n : length $CHUNK;
        $n -= $len;
        await $send->({ type => 'http.response.body', body => substr($CHUNK, 0, $len), more => $n > 0 ? 1 : 0 });
    }
}

async sub respond {
    my ($send, $body) = @_;
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => $body });
}

async sub app {
    my ($scope, $receive, $send) = @_;
    return await sse($scope, $receive, $send) if $scope->{type} eq 'sse';
    die "Unsupported scope type: $scope->{type}\n" if $scope->{type} ne 'http';
    return await upload($receive, $send) if $scope->{path} eq '/upload';
    return await download($scope, $send) if $scope->{path} eq '/download';
    await respond($send, "ok\n");
}

\&app;
