# PAGI::Simple SSE routes, in process through PAGI::Test::Client:
# send(event, data, id) with JSON data, Last-Event-ID, keepalive, channels
# (subscribe, publish from an HTTP route, publish_others), close sending
# sse.close, auto-unsubscribe on disconnect, and an unknown path declined
# with a plain 404. The end-to-end subtest runs the same app on PAGI::Server
# over real sockets (wire format, keepalive comments, the 404).
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(stop_server raw_exchange parse_responses wait_for);
use PAGI::Test::Simple qw(client serve request);
use PAGI::Simple;
use PAGI::Simple::PubSub::Memory;

local $SIG{ALRM} = sub { die "simple-sse.t: timed out\n" };
alarm 120;

my $hub = PAGI::Simple::PubSub::Memory->new;
my $closed = 0;
my $app = PAGI::Simple->new(name => 'sse', pubsub => $hub);
$app->sse('/hello' => sub ($sse) {
    $sse->send(greeting => { resumed_from => $sse->last_event_id }, 7);
    $sse->send(undef, "two\nlines");
    $sse->send_event(data => 'full', event => 'e', id => 8, retry => 1500);
    $sse->comment('a note');
    $sse->close;
});
$app->sse('/ka' => sub ($sse) { $sse->keepalive(0.05, 'still here') });
$app->sse('/news/:who' => sub ($sse) {
    $sse->subscribe('news');
    $sse->on(close => sub { $closed++ });
    $sse->publish_others('news', $sse->param('who') . ' joined', event => 'join') if $sse->param('who') eq 'late';
});
$app->post('/publish' => sub ($c) {
    my $n = $c->app->sse_publish(news => $c->req->body, event => 'news', id => 42);
    $c->text("delivered to $n");
});

my $client = client($app);

my $s = $client->sse('/hello', last_event_id => '6');
is($s->status, 200, 'SSE stream');
is_deeply($s->next_event, { event => 'greeting', data => '{"resumed_from":"6"}', id => 7, retry => undef },
    'send(event, JSON data, id), Last-Event-ID');
is_deeply($s->next_event, { event => undef, data => "two\nlines", id => undef, retry => undef }, 'a plain multi-line message');
is_deeply($s->next_event, { event => 'e', data => 'full', id => 8, retry => 1500 }, 'send_event with every field');
is_deeply([ $s->comments ], ['a note'], 'comment');
ok($s->closed, 'close ended the stream');
is($s->next_event, undef, 'and nothing follows');
$s = $client->sse('/hello');
like($s->next_event->{data}, qr/^\{"resumed_from":null\}$/, 'without Last-Event-ID it is undef');

$s = $client->sse('/ka');
is_deeply($s->keepalive, { interval => 0.05, comment => 'still here' }, 'keepalive asks the server for comments');
$s->close;

my $first = $client->sse('/news/first');
is($hub->subscribers('sse:news'), 1, 'the first stream subscribed');
my $late = $client->sse('/news/late');
is($hub->subscribers('sse:news'), 2, 'the second too');
my $r = $client->post('/publish', body => 'big news');
is($r->content, 'delivered to 2', 'publish reaches both subscribers');
is_deeply($first->next_event, { event => 'join', data => 'late joined', id => undef, retry => undef },
    'publish_others from the late stream reached the first');
is_deeply($first->next_event, { event => 'news', data => 'big news', id => 42, retry => undef }, 'the published event');
my @late_events = $late->events;
is(scalar @late_events, 1, 'publish_others skipped its own stream');
is($late_events[0]{data}, 'big news', 'the late stream got the news');
$first->close;
is($hub->subscribers('sse:news') . " $closed", '1 1', 'a disconnected stream unsubscribes and runs on(close)');
$late->close;
ok(!$hub->has_channel('sse:news') && $closed == 2, 'the last one leaves the channel empty');
is($client->post('/publish', body => 'nobody')->content, 'delivered to 0', 'publishing afterwards reaches nobody');

$r = $client->sse('/nowhere');
isa_ok($r, 'PAGI::Test::Client::Response', 'an unknown SSE path is declined');
is($r->status . ' ' . $r->content, '404 Not Found', 'with a plain 404');
$client->stop;

# End to end on PAGI::Server: the wire format, keepalive comments sent by
# the server, publishing between real connections, the declined 404.
subtest 'over real sockets' => sub {
    $closed = 0;
    my ($server, $port) = serve($app);
    my $sse_req = sub ($path, @h) {
        "GET $path HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n" . join('', map { "$_\r\n" } @h) . "\r\n";
    };
    my $raw = raw_exchange($port, $sse_req->('/hello', 'Last-Event-ID: 6'), timeout => 15)->get;
    my ($res) = parse_responses($raw);
    is($res->{status}, 200, 'SSE stream');
    like($res->{header}{'content-type'}, qr{^text/event-stream}, 'event-stream');
    is($res->{header}{'cache-control'}, 'no-cache', 'not cached');
    is($res->{body}, qq{event: greeting\ndata: {"resumed_from":"6"}\nid: 7\n\ndata: two\ndata: lines\n\n}
        . qq{event: e\ndata: full\nid: 8\nretry: 1500\n\n:a note\n\n}, 'send(event, JSON data, id), multi-line data, send_event, comment');
    ok(!$res->{incomplete}, 'close ended the stream');

    $raw = raw_exchange($port, $sse_req->('/ka'), until => qr/(:still here\n\n.*){2}/s, timeout => 15)->get;
    like($raw, qr/(:still here\n\n.*){2}/s, 'keepalive comments');

    my $first = raw_exchange($port, $sse_req->('/news/first'), until => qr/event: news\n.*\n\n/s, timeout => 15);
    ok(wait_for(sub { $hub->subscribers('sse:news') == 1 }, 15), 'the first stream subscribed');
    my $late = raw_exchange($port, $sse_req->('/news/late'), until => qr/event: news\n.*\n\n/s, timeout => 15);
    ok(wait_for(sub { $hub->subscribers('sse:news') == 2 }, 15), 'the second too');
    my $r = request($port, 'POST', '/publish', body => 'big news');
    is($r->{body}, 'delivered to 2', 'publish reaches both subscribers');
    my $body1 = (parse_responses($first->get))[0]{body};
    like($body1, qr/event: join\ndata: late joined\n\n/, 'publish_others from the late stream reached the first');
    like($body1, qr/event: news\ndata: big news\nid: 42\n\n/, 'the published event');
    my $body2 = (parse_responses($late->get))[0]{body};
    unlike($body2, qr/joined/, 'publish_others skipped its own stream');
    like($body2, qr/data: big news/, 'the late stream got the news');
    ok(wait_for(sub { !$hub->has_channel('sse:news') && $closed == 2 }, 15), 'disconnected streams unsubscribe and run on(close)');

    $raw = raw_exchange($port, $sse_req->('/nowhere'), timeout => 15)->get;
    ($res) = parse_responses($raw);
    is("$res->{status} $res->{body}", '404 Not Found', 'an unknown SSE path is declined with a plain 404');
    stop_server($server);
};

done_testing;
