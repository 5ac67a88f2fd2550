# PAGI::Simple SSE routes over real sockets: send(event, data, id) with JSON
# data, Last-Event-ID, keepalive comments, channels (subscribe, publish from
# an HTTP route, publish_others), close sending sse.close, auto-unsubscribe on
# disconnect, and an unknown path declined with a plain 404.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(stop_server raw_exchange parse_responses wait_for);
use PAGI::Test::Simple qw(serve request);
use PAGI::Simple;
use PAGI::Simple::PubSub::Memory;

my $hub = PAGI::Simple::PubSub::Memory->new;
my $closed = 0;
my $app = PAGI::Simple->new(name => 'sse', pubsub => $hub);
$app->sse('/hello' => sub ($sse) {
    $sse->send(greeting => { resumed_from => $sse->last_event_id }, 7);
    $sse->send(undef, "two\nlines");
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

my ($server, $port) = serve($app);
my $sse_req = sub ($path, @h) {
    "GET $path HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n" . join('', map { "$_\r\n" } @h) . "\r\n";
};

my $raw = raw_exchange($port, $sse_req->('/hello', 'Last-Event-ID: 6'), timeout => 15)->get;
my ($res) = parse_responses($raw);
is($res->{status}, 200, 'SSE stream');
like($res->{header}{'content-type'}, qr{^text/event-stream}, 'event-stream');
is($res->{header}{'cache-control'}, 'no-cache', 'not cached');
is($res->{body}, qq{event: greeting\ndata: {"resumed_from":"6"}\nid: 7\n\ndata: two\ndata: lines\n\n},
    'send(event, JSON data, id), Last-Event-ID, multi-line data');
ok(!$res->{incomplete}, 'close ended the stream');

$raw = raw_exchange($port, $sse_req->('/ka'), until => qr/(:still here\n\n.*){2}/s, timeout => 15)->get;
like($raw, qr/:still here\n\n/, 'keepalive comments');

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
done_testing;
