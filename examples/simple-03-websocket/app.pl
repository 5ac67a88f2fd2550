# PAGI::Simple WebSocket chat rooms with presence.
# Run: perl -Mblib bin/pagi-server examples/simple-03-websocket/app.pl --port 5000
# Open http://127.0.0.1:5000/ in two browser tabs, pick a name and a room, and talk;
# or connect any WebSocket client to ws://127.0.0.1:5000/chat/ROOM?name=NAME.
#   curl http://127.0.0.1:5000/rooms         → {"lobby":["Ada","Bob"]}: who is in which room
# The server sends JSON text frames:
#   {"type":"members","room":"lobby","members":["Ada","Bob"]}   first, to the one who joined
#   {"type":"join","name":"Bob","members":[...]}               to the others in the room
#   {"type":"message","name":"Ada","text":"hi"}                 every message, to everyone in the room
#   {"type":"leave","name":"Bob","members":[...]}              when someone disconnects
# A client sends plain text: each text frame is one chat message (at most 1000 characters).
# A missing or bad name closes with 4400, a name already in the room with 4409.
use PAGI::Simple;
use Encode ();
use JSON::MaybeXS ();

my $app = PAGI::Simple->new(name => 'Chat');
my $JSON = JSON::MaybeXS->new(canonical => 1);    # characters out: WebSocket text frames take text

# Presence, per room: connection id → name. Room delivery itself is PAGI::Simple's.
my %members;

sub names ($room) { [ sort values %{ $members{$room} || {} } ] }

# The query string's name=... value, decoded (WebSocket handlers get the raw query).
sub query_value ($scope, $key) {
    for my $pair (split /[&;]/, $scope->{query_string} // '') {
        my ($k, $v) = map { tr/+/ /r =~ s/%([0-9A-Fa-f]{2})/chr hex $1/ger } split /=/, $pair, 2;
        return Encode::decode('UTF-8', $v // '') if $k eq $key;
    }
    return undef;
}

$app->websocket('/chat/:room<[\w-]{1,32}>' => sub ($ws) {
    my $room = $ws->path_params->{room};
    my $name = query_value($ws->scope, 'name') // '';
    $name =~ s/^\s+|\s+$//g;
    return $ws->close(4400, 'name: give 1 to 40 printable characters')
        if $name eq '' || length $name > 40 || $name =~ /[[:cntrl:]]/;
    return $ws->close(4409, 'name: already taken in this room')
        if grep { $_ eq $name } values %{ $members{$room} || {} };

    $members{$room}{ $ws->id } = $name;
    $ws->join($room);
    $ws->send($JSON->encode({ type => 'members', room => $room, members => names($room) }));
    $ws->broadcast($room, $JSON->encode({ type => 'join', name => $name, members => names($room) }));

    $ws->on(message => sub ($text) {
        $text = substr($text, 0, 1000);
        return unless $text =~ /\S/;
        $ws->broadcast_all($room, $JSON->encode({ type => 'message', name => $name, text => $text }));
    });
    # By now the connection has left the room, so this reaches only the others.
    $ws->on(close => sub ($code, $reason) {
        delete $members{$room}{ $ws->id };
        delete $members{$room} unless %{ $members{$room} };
        $ws->broadcast($room, $JSON->encode({ type => 'leave', name => $name, members => names($room) }));
    });
});

$app->get('/rooms' => sub ($c) { $c->json({ map { $_ => names($_) } keys %members }) });

my $PAGE = <<'HTML';
<!doctype html>
<meta charset="utf-8">
<title>PAGI::Simple chat</title>
<h1>Chat</h1>
<form id="join">
  <label>Name <input id="name" maxlength="40" required></label>
  <label>Room <input id="room" value="lobby" required></label>
  <button>Join</button>
</form>
<p id="status">not connected</p>
<p>In the room: <span id="members"></span></p>
<ul id="log"></ul>
<form id="say"><input id="text" maxlength="1000" autocomplete="off"> <button>Send</button></form>
<script>
  const $ = (id) => document.getElementById(id);
  let ws;
  function line(kind, text) {
    const item = document.createElement('li');
    item.className = kind;
    item.textContent = text;
    $('log').appendChild(item);
  }
  // join(name, room) is also what a test calls.
  window.join = function (name, room) {
    if (ws) ws.close();
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host
      + '/chat/' + encodeURIComponent(room) + '?name=' + encodeURIComponent(name);
    ws = new WebSocket(url);
    ws.onopen = () => { $('status').textContent = 'connected to ' + room + ' as ' + name; };
    ws.onclose = (e) => { $('status').textContent = 'disconnected' + (e.reason ? ': ' + e.reason : ''); };
    ws.onmessage = (e) => {
      const m = JSON.parse(e.data);
      if (m.members) $('members').textContent = m.members.join(', ');
      if (m.type === 'join') line('join', m.name + ' joined');
      if (m.type === 'leave') line('leave', m.name + ' left');
      if (m.type === 'message') line('message', m.name + ': ' + m.text);
    };
  };
  window.say = function (text) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(text); };
  $('join').onsubmit = (e) => { e.preventDefault(); join($('name').value, $('room').value); };
  $('say').onsubmit = (e) => { e.preventDefault(); say($('text').value); $('text').value = ''; };
</script>
HTML

$app->get('/' => sub ($c) { $c->html($PAGE) });

$app->to_app;
