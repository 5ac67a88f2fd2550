use strict;
use warnings;
use Test::More;
use lib 't/lib';
use PAGI::Test::Server qw(loop start_server stop_server raw_exchange parse_responses);
use PAGI::Test::WebSocket qw(ws_connect);
use Future::AsyncAwait;
use IO::Async::Loop;
use Scalar::Util qw(refaddr);

# A $receive with nothing yet hands the app a pending Future of the
# server's loop (PAGI::Server::Future): an IO::Async::Future whose blocking
# ->get runs the loop until the event is there, as do the Futures derived
# from it. Both requests here are answered only if ->get works: the app
# blocks in it while the client's bytes are still to come.

my %seen;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    if ($scope->{type} eq 'websocket') {
        $receive->()->get;    # websocket.connect, queued: ready at once
        await $send->({ type => 'websocket.accept' });
        my $f = $receive->();
        $seen{ws_class} = ref $f;
        $seen{ws_loop}  = $f->loop;
        my $ev = $f->get;    # the message comes after the handshake
        await $send->({ type => 'websocket.send', text => "got $ev->{text}" });
        my $derived = $receive->()->then(sub { Future->done("then $_[0]{text}") });
        $seen{derived_class} = ref $derived;
        await $send->({ type => 'websocket.send', text => $derived->get });
        await $send->({ type => 'websocket.close', code => 1000 });
        return;
    }
    return if $scope->{type} ne 'http';
    my $body = '';
    while (1) {
        my $f = $receive->();
        $seen{http_isa} = $f->isa('IO::Async::Future') ? 1 : 0 unless $f->is_ready;
        my $ev = $f->get;
        $body .= $ev->{body} // '';
        last unless $ev->{more};
    }
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => "read: $body" });
};

my ($server, $port) = start_server(app => $app);

# The clients are driven by callbacks, since the test's own code waits
# below the app's blocking ->get on the same loop.
my $raw = raw_exchange($port, undef, timeout => 10, gap => 0.3, chunks => [
    "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n",
    "5\r\n body\r\n0\r\n\r\n",
])->get;
my ($r) = parse_responses($raw);
is($r && $r->{body}, 'read: hello body', 'HTTP: a blocking ->get on $receive waits for the body in the loop');
is($seen{http_isa}, 1, 'the pending Future is an IO::Async::Future');

my @got;
my $talk = ws_connect($port, timeout => 10)->then(sub {
    my ($ws) = @_;
    # Meanwhile the app is blocked in ->get.
    return loop()->delay_future(after => 0.3)->then(sub {
        $ws->send_text('one');
        $ws->next_frame(10);
    })->then(sub {
        push @got, $_[0]{payload};
        $ws->send_text('two');
        $ws->next_frame(10);
    })->then(sub {
        push @got, $_[0]{payload};
        Future->done;
    });
});
ok(eval { $talk->get; 1 }, 'the WebSocket exchange completes') or diag($@);
is($got[0], 'got one', 'WebSocket: a blocking ->get on $receive waits for the message');
is($got[1], 'then two', 'and so does ->get on a Future derived from it');
like($seen{ws_class}, qr/\APAGI::Server::Future::/, 'the pending Future is a PAGI::Server::Future');
is(refaddr($seen{ws_loop}), refaddr(loop()), 'its loop is the server\'s');
is($seen{derived_class}, $seen{ws_class}, 'a derived Future has the same class');

stop_server($server);

# One class per loop, each knowing its own loop.
require PAGI::Server::Future;
require IO::Async::Loop::Poll;
my $other = IO::Async::Loop::Poll->new;
my ($c1, $c2) = map { PAGI::Server::Future->class_for($_) } loop(), $other;
isnt($c1, $c2, 'two loops, two classes');
is(PAGI::Server::Future->class_for(loop()), $c1, 'the same loop, the same class');
is(refaddr($c1->new->loop), refaddr(loop()), 'the first class\'s Futures have the first loop');
is(refaddr($c2->new->loop), refaddr($other), 'the second class\'s Futures have the second loop');
my $f = $c2->new;
$other->later(sub { $f->done('from the other loop') });
is($f->get, 'from the other loop', '->get runs the loop of its class');

done_testing;
