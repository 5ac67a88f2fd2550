# PAGI::Simple chat showcase: rooms over WebSocket with presence (a member
# count per room), an SSE activity feed of who joined, left and posted where,
# and a static browser page (public/). See README.md in this directory.
# Run: perl -Mblib bin/pagi-server examples/10-chat-showcase/app.pl --port 5000
# Across workers, once pagi-server has rooms on Redis (issue 13):
#   pagi-server --app examples/10-chat-showcase/app.pl --workers 2 --pubsub redis://127.0.0.1:6379/0
# Open http://127.0.0.1:5000/ in two tabs; or with curl and any WebSocket client:
#   curl http://127.0.0.1:5000/api/rooms            → {"rooms":{"lobby":1}}: members per room
#   curl -N -H 'Accept: text/event-stream' http://127.0.0.1:5000/activity
#   curl -d 'the server says hi' http://127.0.0.1:5000/api/rooms/lobby/messages
#                                                   → 202 {"delivered":1,"room":"lobby"}
#   WebSocket ws://127.0.0.1:5000/ws/ROOM?name=NAME (ROOM: 1-32 of [A-Za-z0-9_-])
# The WebSocket sends JSON text frames:
#   {"type":"welcome","room":"lobby","name":"Ada","members":1}   first, to the one who joined
#   {"type":"join","name":"Bob","members":2}                    to the others in the room
#   {"type":"message","name":"Ada","text":"hi"}                 to everyone in the room
#   {"type":"leave","name":"Bob","members":1}                   to the others, when Bob goes
# and takes plain text: each text frame is one message (1-1000 characters).
# A missing or bad name closes with 4400. The activity feed's events are
# "rooms" first ({"rooms":{...}}, the member counts), then "join", "leave"
# and "message" ({"room":..,"name":..,"members":..}; no message text).
use PAGI::Simple;
use Future;
use Future::AsyncAwait;
use File::Basename ();
use File::Spec;
use Encode ();
use JSON::MaybeXS ();

my $app = PAGI::Simple->new(name => 'Chat showcase');
my $JSON = JSON::MaybeXS->new(canonical => 1);    # characters: WebSocket text frames take text
my $PUBLIC = File::Spec->catdir(File::Basename::dirname(File::Spec->rel2abs(__FILE__)), 'public');
my $ROOM = qr/\A[\w-]{1,32}\z/a;

# Rooms with members in this process. Delivery and the counts are
# $app->pubsub's; this only remembers which rooms to list.
my %rooms;

# Members of a room, counted by the pubsub backend: a Future. Under
# pagi-server $app->pubsub runs on the server's groups extension, and with
# --pubsub redis://... this is the count across every worker and machine
# (without Redis, and on other PAGI servers, this process's count).
sub members ($room) { $app->pubsub->room_cluster_count($room) }

async sub room_counts () {
    delete $rooms{$_} for grep { !$app->pubsub->room_count($_) } keys %rooms;
    my @names = sort keys %rooms;
    my @counts = await Future->needs_all(map { members($_) } @names);
    my %counts;
    @counts{@names} = @counts;
    return \%counts;
}

# Everything the activity feed shows goes out here.
sub activity ($event, %data) { $app->sse_publish(activity => \%data, event => $event) }

$app->websocket('/ws/:room' => async sub ($ws) {
    my $room = $ws->path_params->{room};
    return $ws->close(4400, 'room: 1 to 32 letters, digits, _ or -') unless $room =~ $ROOM;
    my $name = $ws->query_param('name') // '';
    $name =~ s/^\s+|\s+$//g;
    return $ws->close(4400, 'name: give 1 to 40 printable characters')
        if $name eq '' || length $name > 40 || $name =~ /[[:cntrl:]]/;

    $ws->join($room);
    $rooms{$room} = 1;
    my $count = await members($room);
    await $ws->send($JSON->encode({ type => 'welcome', room => $room, name => $name, members => $count }));
    $ws->broadcast($room, $JSON->encode({ type => 'join', name => $name, members => $count }));
    activity(join => room => $room, name => $name, members => $count);

    $ws->on(message => async sub ($text) {
        $text = substr($text, 0, 1000);
        return unless $text =~ /\S/;
        $ws->broadcast_all($room, $JSON->encode({ type => 'message', name => $name, text => $text }));
        activity(message => room => $room, name => $name, members => await members($room));
    });
    # The connection has left the room by now: the count is without it.
    $ws->on(close => async sub ($code, $reason) {
        my $left = await members($room);
        $ws->broadcast($room, $JSON->encode({ type => 'leave', name => $name, members => $left }));
        activity(leave => room => $room, name => $name, members => $left);
    });
});

$app->sse('/activity' => async sub ($sse) {
    $sse->keepalive(15);
    await $sse->send(rooms => { rooms => await room_counts() });
    $sse->subscribe('activity');
});

$app->get('/api/rooms' => async sub ($c) { await $c->json({ rooms => await room_counts() }) });

# A message from the server (an HTTP request, no WebSocket needed) to a room.
$app->post('/api/rooms/:room/messages' => sub ($c) {
    my $room = $c->path_params->{room};
    $c->error(400, 'room: 1 to 32 letters, digits, _ or -') unless $room =~ $ROOM;
    my $text = eval { Encode::decode('UTF-8', $c->req->body, Encode::FB_CROAK() | Encode::LEAVE_SRC()) }
        // $c->error(400, 'body: not UTF-8');
    $c->error(400, 'body: the text to send is required') unless $text =~ /\S/;
    $c->error(400, 'body: at most 1000 characters') if length $text > 1000;
    my $n = $app->pubsub->room_send($room, $JSON->encode({ type => 'message', name => 'server', text => $text }));
    $c->json({ room => $room, delivered => $n }, 202);
});

# The page and its script: index.html for /, the rest by name.
$app->static('/' => $PUBLIC);

$app->to_app;
