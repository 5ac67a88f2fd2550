# PAGI::Simple WebSocket routes over real sockets: send/on(message|close|
# error)/close, path params and stash, rooms (join/leave, broadcast to a room
# excluding the sender, broadcast_all including it), the one-argument route
# broadcast, auto-leave on disconnect, handler errors closing with 1011, and
# an unknown path refused (403).
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(stop_server wait_for);
use PAGI::Test::Simple qw(serve);
use PAGI::Test::WebSocket qw(ws_connect ws_open OP_TEXT OP_BINARY OP_CLOSE);
use PAGI::Simple;
use PAGI::Simple::PubSub::Memory;

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
        my $n = $ws->broadcast($room, "[$room] $data");
        $ws->send("sent to $n");
    });
});
$app->websocket('/bad' => sub ($ws) {
    $ws->on(error => sub ($err) { push @errors, $err });
    $ws->on(message => sub ($data) { die "bad message\n" });
});

my ($server, $port) = serve($app);

my ($c) = ws_connect($port, path => '/echo')->get;
$c->send_text('hello');
my ($f) = $c->next_frame(15)->get;
is($f->{payload}, 'echo 1: hello', 'send and on(message)');
$c->send_text('again');
($f) = $c->next_frame(15)->get;
is($f->{payload}, 'echo 2: again', 'stash persists per connection');
$c->send_binary("\x00\x01\xff");
($f) = $c->next_frame(15)->get;
is("$f->{opcode} " . unpack('H*', $f->{payload}), OP_BINARY . ' 0001ff', 'binary in, binary out');
$c->send_text('quit');
$f = $c->wait_close(15)->get;
is("$f->{code} $f->{reason}", '4000 bye', 'close(code, reason)');
$c->send_close(4000, '');
ok(wait_for(sub { @closed }, 15), 'the close callback ran');
is($closed[0], '4000 ', 'with the code and reason of the disconnect');

my ($a1) = ws_connect($port, path => '/room/red')->get;
my ($a2) = ws_connect($port, path => '/room/red')->get;
my ($b1) = ws_connect($port, path => '/room/blue')->get;
ok(wait_for(sub { @{ $hub->room_members('red') } == 2 && @{ $hub->room_members('blue') } == 1 }, 15), 'three clients joined their rooms');
$a1->send_text('hi');
($f) = $a1->next_frame(15)->get;
is($f->{payload}, 'sent to 1', 'broadcast to a room excludes the sender');
($f) = $a2->next_frame(15)->get;
is($f->{payload}, '[red] hi', 'the other member gets it');
$a2->send_text('all x');
my @got = map { $_->{payload} } $a2->next_frames(2, 15)->get;
is(join('|', sort @got), 'reached 2|x', 'broadcast_all includes the sender');
($f) = $a1->next_frame(15)->get;
is($f->{payload}, 'x', 'and the others');
is($b1->pending, 0, 'another room hears nothing');
$a2->send_text('leave');
($f) = $a2->next_frame(15)->get;
is($f->{payload}, 'left ;', 'leave');
$a1->send_text('anyone?');
($f) = $a1->next_frame(15)->get;
is($f->{payload}, 'sent to 0', 'after leaving, nobody else is in the room');
$a1->send_close(1000, '');
$a1->wait_close(15)->get;
ok(wait_for(sub { !$hub->has_channel('room:red') }, 15), 'disconnecting leaves every room');

my ($e) = ws_connect($port, path => '/bad')->get;
$e->send_text('x');
$f = $e->wait_close(15)->get;
is($f->{code}, 1011, 'a dying callback closes with 1011');
like($errors[0], qr/bad message/, 'after running on(error)');

my $r = ws_open($port, path => '/nope')->response->get;
is($r->{status}, 403, 'an unknown WebSocket path is refused');

$_->send_close(1000, '') for $a2, $b1, $e;
stop_server($server);
done_testing;
