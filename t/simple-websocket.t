# PAGI::Simple WebSocket routes, in process through PAGI::Test::Client:
# send/on(message|close|error)/close, path params and stash, rooms
# (join/leave, broadcast to a room excluding the sender, broadcast_all
# including it), the one-argument route broadcast, auto-leave on disconnect,
# handler errors closing with 1011, and an unknown path refused (403). The
# end-to-end subtest runs the same app on PAGI::Server over real sockets.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(stop_server wait_for);
use PAGI::Test::Simple qw(client serve);
use PAGI::Test::WebSocket qw(ws_connect ws_open OP_TEXT OP_BINARY OP_CLOSE);
use PAGI::Simple;
use PAGI::Simple::PubSub::Memory;

local $SIG{ALRM} = sub { die "simple-websocket.t: timed out\n" };
alarm 120;

my $hub = PAGI::Simple::PubSub::Memory->new;
my (@closed, @errors);
my $app = PAGI::Simple->new(name => 'ws', pubsub => $hub);
$app->websocket('/echo' => sub ($ws) {
    $ws->stash->{n} = 0;
    $ws->on(message => sub ($data) {
        $ws->stash->{n}++;
        return $ws->close(4000, 'bye') if $data eq 'quit';
        return $ws->send($data, binary => 1) if $data =~ /\A\x00/;
        $ws->send("echo $ws->{stash}{n}: $data");
    });
    $ws->on(close => sub ($code, $reason) { push @closed, "$code $reason" });
});
$app->websocket('/room/:name' => sub ($ws) {
    my $room = $ws->param('name');
    $ws->join($room);
    $ws->on(message => sub ($data) {
        if ($data eq 'leave') { $ws->leave($room); return $ws->send('left ' . join(',', @{ $ws->rooms }) . ';') }
        if ($data =~ /^all (.*)/) { return $ws->send('reached ' . $ws->broadcast_all($room, $1)) }
        if ($data =~ /^route (.*)/) { return $ws->send('route reached ' . $ws->broadcast($1)) }
        my $n = $ws->broadcast($room, "[$room] $data");
        $ws->send("sent to $n");
    });
});
$app->websocket('/bad' => sub ($ws) {
    $ws->on(error => sub ($err) { push @errors, $err });
    $ws->on(message => sub ($data) { die "bad message\n" });
});
$app->websocket('/dies-early' => sub ($ws) { die "handler failed\n" });

my @warnings;
local $SIG{__WARN__} = sub { push @warnings, @_ };
my $client = client($app);

my $c = $client->websocket('/echo');
ok($c->accepted, 'the route accepts');
$c->send_text('hello');
is($c->receive, 'echo 1: hello', 'send and on(message)');
$c->send_text('again');
is($c->receive, 'echo 2: again', 'stash persists per connection');
$c->send_bytes("\x00\x01\xff");
my $m = $c->receive_message;
is(join(' ', keys %$m) . ' ' . unpack('H*', $m->{bytes}), 'bytes 0001ff', 'binary in, binary out');
$c->send_text("caf\x{e9}");
is($c->receive, "echo 4: caf\x{e9}", 'text is characters both ways');
$c->send_text('quit');
is($c->wait_closed(timeout => 15), 4000, 'close(code, reason)');
is($c->close_reason, 'bye', 'with the reason');
is($closed[0], '4000 bye', 'the close callback ran, with the code and reason of the close');
my $other = $client->websocket('/echo');
is($client->websocket('/echo')->accepted, 1, 'a second session on the route');
$other->send_text('x');
is($other->receive, 'echo 1: x', 'has its own stash');
$other->close(4001, 'client done');
is($closed[-1], '4001 client done', 'a close by the client reaches on(close) with its code and reason');

my $a1 = $client->websocket('/room/red');
my $a2 = $client->websocket('/room/red');
my $b1 = $client->websocket('/room/blue');
is(scalar @{ $hub->room_members('red') } . ' ' . scalar @{ $hub->room_members('blue') }, '2 1', 'three clients joined their rooms');
$a1->send_text('hi');
is($a1->receive, 'sent to 1', 'broadcast to a room excludes the sender');
is($a2->receive, '[red] hi', 'the other member gets it');
$a2->send_text('all x');
is(join('|', sort map { $a2->receive } 1 .. 2), 'reached 2|x', 'broadcast_all includes the sender');
is($a1->receive, 'x', 'and the others');
ok(!eval { $b1->receive(timeout => 0.3); 1 }, 'another room hears nothing');
like($@, qr/no message from the app/, '(the receive timed out)');
$b1->send_text('route to the route');
is($b1->receive, 'route reached 2', 'one-argument broadcast reaches the other clients of the route');
is($a1->receive . ' / ' . $a2->receive, 'to the route / to the route', 'in every room');
$a2->send_text('leave');
is($a2->receive, 'left ;', 'leave');
$a1->send_text('anyone?');
is($a1->receive, 'sent to 0', 'after leaving, nobody else is in the room');
$a1->close(1000, '');
ok(!$hub->has_channel('room:red'), 'disconnecting leaves every room');
$b1->close;
ok(!$hub->has_channel('room:blue'), 'also for the other room');

my $e = $client->websocket('/bad');
$e->send_text('x');
is($e->wait_closed(timeout => 15), 1011, 'a dying callback closes with 1011');
like($errors[0], qr/bad message/, 'after running on(error)');
my $early = $client->websocket('/dies-early');
is($early->wait_closed(timeout => 15), 1011, 'a dying handler closes the accepted session with 1011');
like(join('', @warnings), qr/handler failed/, 'and is logged');

my $r = $client->websocket('/nope');
ok(!$r->accepted, 'an unknown WebSocket path is not accepted');
is($r->status, 403, 'it is refused with 403');

$_->close for $a2, $other;
$client->stop;

# End to end on PAGI::Server: framing, the close handshake, broadcasts
# between real connections and the 403 of an unknown path.
subtest 'over real sockets' => sub {
    @closed = ();
    my ($server, $port) = serve($app);
    my ($c) = ws_connect($port, path => '/echo')->get;
    $c->send_text('hello');
    my ($f) = $c->next_frame(15)->get;
    is("$f->{opcode} $f->{payload}", OP_TEXT . ' echo 1: hello', 'a text frame back');
    $c->send_binary("\x00\x01\xff");
    ($f) = $c->next_frame(15)->get;
    is("$f->{opcode} " . unpack('H*', $f->{payload}), OP_BINARY . ' 0001ff', 'binary in, binary out');
    $c->send_text('quit');
    $f = $c->wait_close(15)->get;
    is("$f->{code} $f->{reason}", '4000 bye', 'a close frame with the code and reason');
    $c->send_close(4000, '');
    ok(wait_for(sub { @closed }, 15), 'the close callback ran');
    like($closed[0], qr/^4000 /, 'with the close code');

    my ($a1) = ws_connect($port, path => '/room/red')->get;
    my ($a2) = ws_connect($port, path => '/room/red')->get;
    ok(wait_for(sub { @{ $hub->room_members('red') } == 2 }, 15), 'two connections joined the room');
    $a1->send_text('hi');
    ($f) = $a1->next_frame(15)->get;
    is($f->{payload}, 'sent to 1', 'broadcast to a room excludes the sender');
    ($f) = $a2->next_frame(15)->get;
    is($f->{payload}, '[red] hi', 'the other connection gets it');
    $a1->send_close(1000, '');
    $a1->wait_close(15)->get;
    $a2->send_close(1000, '');
    $a2->wait_close(15)->get;
    ok(wait_for(sub { !$hub->has_channel('room:red') }, 15), 'disconnecting leaves every room');

    my ($e) = ws_connect($port, path => '/bad')->get;
    $e->send_text('x');
    $f = $e->wait_close(15)->get;
    is($f->{code}, 1011, 'a dying callback sends a 1011 close frame');
    $e->send_close(1000, '');

    my $r = ws_open($port, path => '/nope')->response->get;
    is($r->{status}, 403, 'an unknown WebSocket path is refused with HTTP 403');
    stop_server($server);
};

done_testing;
