# PAGI::Simple Server-Sent Events: a live feed with channels.
# Run: perl -Mblib bin/pagi-server examples/simple-04-sse/app.pl --port 5000
# Open http://127.0.0.1:5000/ in a browser, or watch and publish with curl:
#   curl -N -H 'Accept: text/event-stream' http://127.0.0.1:5000/events/news      one channel, by path
#   curl -N -H 'Accept: text/event-stream' 'http://127.0.0.1:5000/events?channel=news&channel=tick'
#   curl -d 'Dune wins a prize' http://127.0.0.1:5000/publish/news
#                                  → 202 {"channel":"news","id":1,"subscribers":1}
# Each stream starts with a "subscribed" event (no id) naming its channels.
# Then every event is named after its channel, carries an id (one sequence for
# all channels) and the published text as data; the "tick" channel gets
# {"n":N,"time":"..."} from the server every second (publishing to it is 403).
# A reconnecting client sends Last-Event-ID and first gets what it missed on
# its channels from the last 100 events.
use PAGI::Simple;
use IO::Async::Loop;
use IO::Async::Timer::Periodic;
use POSIX ();
use Encode ();

my $app = PAGI::Simple->new(name => 'Live feed');

my $CHANNEL = qr/\A[\w-]{1,32}\z/a;
my $HISTORY = 100;
my @history;          # the last $HISTORY events: { id, channel, data }
my $last_id = 0;
my $ticks = 0;
my $timer;

# Every event goes out through here, so ids and the history stay in step.
sub publish ($channel, $data) {
    my $id = ++$last_id;
    push @history, { id => $id, channel => $channel, data => $data };
    shift @history while @history > $HISTORY;
    my $reached = $app->sse_publish($channel, $data, event => $channel, id => $id);
    return ($id, $reached);
}

$app->on(startup => sub ($app) {
    $timer = IO::Async::Timer::Periodic->new(interval => 1, on_tick => sub {
        publish(tick => { n => ++$ticks, time => POSIX::strftime('%Y-%m-%dT%H:%M:%SZ', gmtime) });
    });
    IO::Async::Loop->new->add($timer->start);
});
$app->on(shutdown => sub ($app) {
    return unless $timer;
    $timer->stop if $timer->is_running;
    $timer->remove_from_parent if $timer->loop;
    undef $timer;
});

# The channel=... values of the query string (SSE handlers get the raw query).
sub query_channels ($scope) {
    my @channels;
    for my $pair (split /[&;]/, $scope->{query_string} // '') {
        my ($k, $v) = map { tr/+/ /r =~ s/%([0-9A-Fa-f]{2})/chr hex $1/ger } split /=/, $pair, 2;
        push @channels, $v // '' if $k eq 'channel';
    }
    return @channels;
}

sub stream ($sse, @channels) {
    my %seen;
    @channels = grep { !$seen{$_}++ } @channels;
    my $problem = !@channels ? 'channel: name at least one'
        : (grep { !/$CHANNEL/ } @channels) ? 'channel: 1 to 32 letters, digits, _ or -'
        : @channels > 8 ? 'channel: at most 8 per stream' : undef;
    # The stream has already started (200), so a refusal is an event, then the end.
    if ($problem) {
        $sse->send(refused => { error => $problem });
        return $sse->close;
    }
    $sse->keepalive(15);
    $sse->send(subscribed => { channels => [ sort @channels ] });
    # Replay and subscribe in one go (nothing can be published in between),
    # so a resuming client misses nothing and sees nothing twice.
    my $after = $sse->last_event_id;
    if (defined $after && $after =~ /\A\d+\z/) {
        my %on = map { $_ => 1 } @channels;
        for my $e (grep { $_->{id} > $after && $on{ $_->{channel} } } @history) {
            $sse->send($e->{channel}, $e->{data}, $e->{id});
        }
    }
    $sse->subscribe($_) for @channels;
}

$app->sse('/events/:channel' => sub ($sse) { stream($sse, $sse->path_params->{channel}) });
$app->sse('/events' => sub ($sse) { stream($sse, query_channels($sse->scope)) });

$app->post('/publish/:channel' => sub ($c) {
    my $channel = $c->path_params->{channel};
    $c->error(400, 'channel: 1 to 32 letters, digits, _ or -') unless $channel =~ $CHANNEL;
    $c->error(403, 'channel: tick is published by the server') if $channel eq 'tick';
    my $text = eval { Encode::decode('UTF-8', $c->req->body, Encode::FB_CROAK() | Encode::LEAVE_SRC()) }
        // $c->error(400, 'body: not UTF-8');
    $c->error(400, 'body: the text to publish is required') unless $text =~ /\S/;
    $c->error(400, 'body: at most 2000 characters') if length $text > 2000;
    my ($id, $reached) = publish($channel, $text);
    $c->json({ channel => $channel, id => $id, subscribers => $reached }, 202);
});

my $PAGE = <<'HTML';
<!doctype html>
<meta charset="utf-8">
<title>PAGI::Simple live feed</title>
<h1>Live feed</h1>
<form id="watch">
  <label>Channels <input id="channels" value="news tick"></label> <button>Watch</button>
</form>
<form id="pub">
  <label>Channel <input id="channel" value="news"></label>
  <label>Text <input id="text" autocomplete="off"></label> <button>Publish</button>
</form>
<p id="status">not connected</p>
<ul id="log"></ul>
<script>
  const $ = (id) => document.getElementById(id);
  let source;
  function line(kind, text) {
    const item = document.createElement('li');
    item.className = kind;
    item.textContent = text;
    $('log').prepend(item);
  }
  function watch(channels) {
    if (source) source.close();
    source = new EventSource('/events?' + channels.map((c) => 'channel=' + encodeURIComponent(c)).join('&'));
    source.onerror = () => { $('status').textContent = 'reconnecting...'; };
    source.addEventListener('subscribed', (e) => {
      $('status').textContent = 'watching ' + JSON.parse(e.data).channels.join(', ');
    });
    // A refused stream would be retried forever: stop it.
    source.addEventListener('refused', (e) => { source.close(); $('status').textContent = JSON.parse(e.data).error; });
    for (const c of channels) {
      source.addEventListener(c, (e) => {
        const text = c === 'tick' ? 'tick ' + JSON.parse(e.data).n : e.data;
        line(c, '#' + e.lastEventId + ' ' + c + ': ' + text);
      });
    }
  }
  $('watch').onsubmit = (e) => { e.preventDefault(); watch($('channels').value.split(/[\s,]+/).filter(Boolean)); };
  $('pub').onsubmit = (e) => {
    e.preventDefault();
    fetch('/publish/' + encodeURIComponent($('channel').value), { method: 'POST', body: $('text').value })
      .then((r) => r.json()).then((r) => { if (r.error) line('error', r.error); });
    $('text').value = '';
  };
  watch(['news', 'tick']);
</script>
HTML

$app->get('/' => sub ($c) { $c->html($PAGE) });
$app->error($_ => sub ($c, $msg) { $c->json({ error => $msg // 'not found' }, $c->status) }) for 400, 403, 404;

$app->to_app;
